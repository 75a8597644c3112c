//! The documentation names only what exists: every file or directory `docs/ARCHITECTURE.md`
//! quotes is in the tree, every module the crate table of §2 names is a module of that crate,
//! and each crate's `lib.rs` (and each `mod.rs` that declares several modules) lists every module
//! it declares in its "Layout" doc.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The crates' source roots, relative to the workspace root.
const SOURCE_ROOTS: &[&str] = &[
    "src",
    "proto/src",
    "registry/src",
    "control/src",
    "function/src",
    "sdk/src",
    "agent/src",
    "gateway/src",
];

/// Backticked spans of `text`.
fn quoted(text: &str) -> impl Iterator<Item = &str> {
    text.split('`').skip(1).step_by(2)
}

/// A quoted span that names a path in the tree (not a store key, a URL, a pattern or a command).
fn is_path(s: &str) -> bool {
    let has_ext = [
        ".rs", ".md", ".toml", ".sh", ".proto", ".py", ".yaml", ".go", ".txt",
    ]
    .iter()
    .any(|e| s.ends_with(e));
    let pathish = s.contains('/') || has_ext;
    pathish
        && !s.starts_with('/')
        && !s.starts_with('~')
        && !s.starts_with(['<', '-', '.'])
        && !s.contains('<')
        && !s.contains("://")
        && !s.contains(['{', '}', '*', '…', ' ', '$', '|', '='])
        && !s.starts_with("croupier.")
        && !s.starts_with("grpc.")
}

fn exists_somewhere(s: &str) -> bool {
    let root = root();
    let s = s.trim_end_matches('/');
    std::iter::once(".")
        .chain([
            "deploy",
            "proto",
            "sdk",
            "sdk/clients",
            "docs",
            "tests",
            "agent/src/packs",
        ])
        .chain(SOURCE_ROOTS.iter().copied())
        .any(|base| root.join(base).join(s).exists())
}

#[test]
fn every_path_the_architecture_names_exists() {
    let doc = std::fs::read_to_string(root().join("docs/ARCHITECTURE.md")).unwrap();
    let missing: BTreeSet<&str> = quoted(&doc)
        .filter(|s| is_path(s) && !exists_somewhere(s))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/ARCHITECTURE.md names paths that do not exist: {missing:?}"
    );
}

/// Every `.rs` file and directory below `dir`, by file stem.
fn module_names(dir: &Path, out: &mut BTreeSet<String>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        let stem = path.file_stem().unwrap().to_string_lossy().to_string();
        if path.is_dir() {
            out.insert(stem);
            module_names(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.insert(stem);
        }
    }
}

#[test]
fn every_module_the_crate_table_names_exists() {
    let doc = std::fs::read_to_string(root().join("docs/ARCHITECTURE.md")).unwrap();
    let section = doc
        .split("## 2. Crates")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("ARCHITECTURE.md has a §2 Crates");
    let mut problems = Vec::new();
    for row in section.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = row.split(" | ").collect();
        let path = cells[0].trim_start_matches("| ").trim_matches('`');
        let src = if path.starts_with("src/") {
            root().join("src")
        } else {
            root().join(path).join("src")
        };
        if !src.join("lib.rs").exists() {
            continue; // not a Rust crate (deploy/, sdk/python/, tests/…)
        }
        let mut modules = BTreeSet::new();
        module_names(&src, &mut modules);
        let owns = cells.last().unwrap();
        // A module is named as "`name`:" or "`name/`" in the table.
        for (i, piece) in owns.split('`').enumerate() {
            let rest = owns.split('`').nth(i + 1).unwrap_or("");
            let names_module = i % 2 == 1
                && (rest.starts_with(':') || piece.ends_with('/'))
                && piece
                    .trim_end_matches('/')
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c == '_' || c == '/');
            if names_module {
                let leaf = piece.trim_end_matches('/').rsplit('/').next().unwrap();
                if !modules.contains(leaf) {
                    problems.push(format!("{path}: `{piece}`"));
                }
            }
        }
    }
    assert!(
        problems.is_empty(),
        "§2 names modules that do not exist: {problems:?}"
    );
}

/// The modules `file` declares (`mod x;` / `pub mod x;`), tests and inline modules left out.
fn declared_modules(file: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cfg_test = false;
    for line in file.lines().map(str::trim) {
        if line.starts_with("#[cfg(test)]") {
            cfg_test = true;
            continue;
        }
        let decl = line
            .strip_prefix("pub mod ")
            .or_else(|| line.strip_prefix("pub(crate) mod "))
            .or_else(|| line.strip_prefix("mod "));
        if let Some(name) = decl.and_then(|d| d.strip_suffix(';'))
            && !cfg_test
        {
            out.push(name.to_string());
        }
        if !line.starts_with("#[") {
            cfg_test = false;
        }
    }
    out
}

fn rs_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            rs_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn each_crate_root_lists_every_module_in_its_layout() {
    let mut problems = Vec::new();
    for src in SOURCE_ROOTS {
        let mut files = Vec::new();
        rs_files(&root().join(src), &mut files);
        for file in files {
            let name = file.file_name().unwrap().to_string_lossy().to_string();
            let text = std::fs::read_to_string(&file).unwrap();
            let modules = declared_modules(&text);
            let must_list = name == "lib.rs" || (name == "mod.rs" && modules.len() >= 3);
            if !must_list {
                continue;
            }
            let docs: String = text
                .lines()
                .take_while(|l| l.starts_with("//!") || l.trim().is_empty())
                .collect::<Vec<_>>()
                .join("\n");
            let Some(layout) = docs.split("Layout").nth(1) else {
                problems.push(format!("{} has no Layout list", file.display()));
                continue;
            };
            for m in modules {
                if !layout.contains(&format!("`{m}`")) {
                    problems.push(format!("{}: module {m} is not in Layout", file.display()));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}
