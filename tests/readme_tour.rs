//! The README runs as written: the `sh` blocks of the tour, the node pack, the fleet, the
//! container pack and pipelines sections are turned into one bash script and run against `croupier dev` with
//! `HOME` in a temp dir (so `~/.croupier/dev` is the test's), Docker and `busybox:latest`
//! (`scripts/busybox-image.sh`). TOML blocks whose first line is `# NAME.toml` are written as
//! those files first.
//!
//! What a command must do is read from the README itself: `(exit N)` or `exit status N` in its
//! comment (or the comment line after it) means exit N; an `error:`, `FailedPrecondition` or
//! `UNAVAILABLE` there means the server refuses it (exit 4); anything else must exit 0. A
//! `croupier agent` command runs in the background (the README's "third terminal") until a
//! paragraph says to stop it with Ctrl-C; a command whose comment says Ctrl-C, and `croupier
//! watch`, run for three seconds.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{bin, docker_ready};

/// The README sections whose commands run in `croupier dev`.
const SECTIONS: &[&str] = &[
    "## A five-minute tour",
    "## The node pack",
    "## The fleet: inventory, metrics, events, state, assignments",
    "## The container pack",
    "## Pipelines",
];

/// A piece of the README, in order.
enum Piece {
    /// A shell block's lines.
    Sh(Vec<String>),
    /// A file to write (a TOML block starting with `# NAME`).
    File(String, String),
    /// A prose line.
    Prose(String),
}

fn pieces(readme: &str) -> Vec<Piece> {
    let mut out = Vec::new();
    let mut in_section = false;
    let mut block: Option<(String, Vec<String>)> = None;
    for line in readme.lines() {
        if let Some((lang, lines)) = &mut block {
            if line.starts_with("```") {
                let (lang, lines) = block.take().unwrap();
                if lang == "sh" {
                    out.push(Piece::Sh(lines));
                } else if lang == "toml"
                    && let Some(name) = lines.first().and_then(|l| l.strip_prefix("# "))
                {
                    out.push(Piece::File(name.trim().to_string(), lines.join("\n")));
                }
            } else {
                let _ = lang;
                lines.push(line.to_string());
            }
            continue;
        }
        if line.starts_with("## ") {
            in_section = SECTIONS.contains(&line.trim());
            continue;
        }
        if !in_section {
            continue;
        }
        if let Some(lang) = line.strip_prefix("```") {
            block = Some((lang.trim().to_string(), Vec::new()));
        } else {
            out.push(Piece::Prose(line.to_string()));
        }
    }
    out
}

/// What a command's comment says it exits with.
fn expected_exit(comment: &str) -> i32 {
    for marker in ["(exit ", "exit status "] {
        if let Some(rest) = comment.split(marker).nth(1)
            && let Some(n) = rest
                .split(|c: char| !c.is_ascii_digit())
                .next()
                .and_then(|d| d.parse().ok())
        {
            return n;
        }
    }
    if ["error:", "FailedPrecondition", "UNAVAILABLE"]
        .iter()
        .any(|w| comment.contains(w))
    {
        return 4;
    }
    0
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The bash script that runs every command of `pieces` with its expectation.
fn script(pieces: &[Piece]) -> (String, usize) {
    let mut out = String::from(
        r#"set -u
BG=()
run() { # run WANT TIMEOUT CMD
    local want=$1 limit=$2 cmd=$3 code
    echo "\$ $cmd"
    if [[ $limit == 0 ]]; then
        eval "$cmd" >out.txt 2>err.txt; code=$?
    else
        eval "timeout $limit $cmd" >out.txt 2>err.txt; code=$?
        [[ $code == 124 ]] && code=0
    fi
    cat out.txt; cat err.txt >&2
    if [[ $code != "$want" ]]; then
        echo "README COMMAND FAILED: $cmd exited $code, the README says $want" >&2
        exit 1
    fi
}
"#,
    );
    let mut count = 0;
    for piece in pieces {
        match piece {
            Piece::File(name, text) => {
                out.push_str(&format!(
                    "printf '%s\\n' {} > {}\n",
                    quote(text),
                    quote(name)
                ));
            }
            Piece::Prose(line) => {
                if line.contains("with Ctrl-C") && line.contains("Stop") {
                    out.push_str("for p in \"${BG[@]}\"; do kill -INT $p; wait $p; done; BG=()\n");
                }
            }
            Piece::Sh(lines) => {
                // Join continuation lines; keep each command's comment and the comment line
                // after it.
                let mut cmds: Vec<(String, String)> = Vec::new();
                let mut pending = String::new();
                for line in lines {
                    let t = line.trim();
                    if t.is_empty() {
                        continue;
                    }
                    if t.starts_with('#') {
                        if let Some(last) = cmds.last_mut() {
                            last.1.push(' ');
                            last.1.push_str(t);
                        }
                        continue;
                    }
                    if let Some(head) = t.strip_suffix('\\') {
                        pending.push_str(head);
                        pending.push(' ');
                        continue;
                    }
                    let full = format!("{pending}{t}");
                    pending.clear();
                    let (cmd, comment) = split_comment(&full);
                    cmds.push((cmd.trim().to_string(), comment.to_string()));
                }
                for (cmd, comment) in cmds {
                    count += 1;
                    if cmd.starts_with("croupier agent ") {
                        out.push_str(&format!(
                            "echo \"\\$ {cmd} &\"; {cmd} >bg-$RANDOM.log 2>&1 & BG+=($!)\n\
                             for _ in $(seq 100); do croupier agents 2>/dev/null | grep -q \"^{id}.*online\" && break; sleep 0.1; done\n",
                            id = agent_id(&cmd)
                        ));
                        continue;
                    }
                    let limit = if comment.contains("Ctrl-C") || cmd == "croupier watch" {
                        3
                    } else {
                        0
                    };
                    out.push_str(&format!(
                        "run {} {limit} {}\n",
                        expected_exit(&comment),
                        quote(&cmd)
                    ));
                }
            }
        }
    }
    out.push_str("for p in \"${BG[@]}\"; do kill -INT $p; wait $p; done\necho TOUR DONE\n");
    (out, count)
}

/// `cmd` without its trailing `# comment` (a `#` outside quotes), and the comment.
fn split_comment(cmd: &str) -> (&str, &str) {
    let (mut single, mut double) = (false, false);
    for (i, c) in cmd.char_indices() {
        match c {
            '\'' if !double => single = !single,
            '"' if !single => double = !double,
            '#' if !single && !double && (i == 0 || cmd[..i].ends_with(' ')) => {
                return (&cmd[..i], &cmd[i..]);
            }
            _ => {}
        }
    }
    (cmd, "")
}

fn agent_id(cmd: &str) -> String {
    let words: Vec<&str> = cmd.split_whitespace().collect();
    words
        .iter()
        .position(|w| *w == "--id")
        .and_then(|i| words.get(i + 1))
        .map_or_else(String::new, |s| (*s).to_string())
}

#[test]
fn the_readme_tour_runs_as_written() {
    if !docker_ready() {
        return;
    }
    let (has_image, _, _) = common::docker(&["image", "inspect", "busybox:latest"]);
    assert!(
        has_image,
        "the README's container examples need busybox:latest: run scripts/busybox-image.sh"
    );
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let (text, count) = script(&pieces(&readme));
    assert!(count > 30, "the README's commands were not found ({count})");
    let home = tempfile::tempdir().unwrap();
    let bin_path = std::path::PathBuf::from(bin());
    let bin_dir = bin_path.parent().unwrap().to_path_buf();
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap());
    let mut cmd = Command::new(bin());
    cmd.args(["dev", "--listen", "127.0.0.1:0"])
        .env("HOME", home.path())
        .env_remove("CROUPIER_HOME")
        .stderr(std::fs::File::create(home.path().join("dev.log")).unwrap());
    let (_dev, url, _) = common::start_dev(cmd, Duration::from_secs(60));
    assert!(!url.is_empty(), "croupier dev did not start");
    std::fs::write(home.path().join("tour.sh"), &text).unwrap();
    let out = Command::new("bash")
        .arg("tour.sh")
        .current_dir(home.path())
        .env("HOME", home.path())
        .env("PATH", path)
        .env("CROUPIER_SERVER", &url)
        .env_remove("CROUPIER_HOME")
        .env_remove("CROUPIER_GAME_ID")
        .env_remove("CROUPIER_ENV")
        .output()
        .unwrap();
    let (o, e) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    println!("{o}");
    assert!(
        out.status.success() && o.contains("TOUR DONE"),
        "the README tour failed:\n--- stdout\n{o}\n--- stderr\n{e}\n--- dev log\n{}",
        std::fs::read_to_string(home.path().join("dev.log")).unwrap_or_default()
    );
}

#[test]
fn expectations_are_read_from_the_comments() {
    assert_eq!(expected_exit("# same response"), 0);
    assert_eq!(expected_exit("# FailedPrecondition"), 4);
    assert_eq!(expected_exit("# error: DeadlineExceeded: …"), 4);
    assert_eq!(
        expected_exit("# … (exit status 1, as docker run passes it on)"),
        1
    );
    assert_eq!(
        split_comment("croupier invoke x --payload '{\"a\":\"#\"}' # note"),
        ("croupier invoke x --payload '{\"a\":\"#\"}' ", "# note")
    );
}
