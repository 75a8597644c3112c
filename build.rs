//! Records the commit the binary is built from (`croupier --version`): `git rev-parse` when the
//! source is a git checkout, else `CROUPIER_COMMIT` from the environment, else "unknown".

fn main() {
    println!("cargo:rerun-if-env-changed=CROUPIER_COMMIT");
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/refs/heads");
    let commit = std::env::var("CROUPIER_COMMIT").ok().or_else(|| {
        std::process::Command::new("git")
            .args(["rev-parse", "--short=12", "HEAD"])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    });
    println!(
        "cargo:rustc-env=CROUPIER_COMMIT={}",
        commit.unwrap_or_else(|| "unknown".into())
    );
}
