//! `src/lib.rs`'s `# Layout` table is true: every module imports only modules listed
//! before it. (A strict order also rules out circles.)

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Module names in the order of the layout table.
fn layout(lib: &str) -> Vec<String> {
    lib.lines()
        .filter_map(|l| l.strip_prefix("//! | [`"))
        .filter_map(|l| l.split('`').next())
        .map(str::to_string)
        .collect()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The top-level module a file under `src/` belongs to.
fn owner(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    match first {
        "lib.rs" | "bin" => None,
        f => Some(f.trim_end_matches(".rs").to_string()),
    }
}

/// Every `crate::name` a file's code (not its comments) refers to.
fn crate_refs(text: &str) -> Vec<(usize, String)> {
    let mut refs = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            let after = &rest[i + "crate::".len()..];
            let name: String = after.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            if !name.is_empty() {
                refs.push((n + 1, name));
            }
            rest = after;
        }
    }
    refs
}

/// `use crate::{a, b::c}` groups name several modules on one line.
fn grouped_refs(text: &str) -> Vec<(usize, String)> {
    let mut refs = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if let Some(g) = line.trim().strip_prefix("use crate::{") {
            for part in g.split(',') {
                let name: String = part
                    .trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    refs.push((n + 1, name));
                }
            }
        }
    }
    refs
}

fn violations(src: &Path) -> Vec<String> {
    let lib = std::fs::read_to_string(src.join("lib.rs")).unwrap();
    let order = layout(&lib);
    assert!(order.len() > 5, "layout table not found in src/lib.rs");
    let rank: HashMap<&str, usize> = order.iter().enumerate().map(|(i, m)| (m.as_str(), i)).collect();
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut bad = Vec::new();
    for f in files {
        let Some(me) = owner(src, &f) else { continue };
        let Some(&my_rank) = rank.get(me.as_str()) else {
            bad.push(format!(
                "module {me} ({}) is missing from the layout table",
                f.display()
            ));
            continue;
        };
        let text = std::fs::read_to_string(&f).unwrap();
        for (line, used) in crate_refs(&text).into_iter().chain(grouped_refs(&text)) {
            if used == me {
                continue;
            }
            match rank.get(used.as_str()) {
                Some(&r) if r < my_rank => {}
                Some(_) => bad.push(format!("{}:{line}: {me} uses {used}, which is above it", f.display())),
                None => bad.push(format!(
                    "{}:{line}: {me} uses crate::{used}, not in the layout table",
                    f.display()
                )),
            }
        }
    }
    bad
}

#[test]
fn layering_is_true() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let bad = violations(&src);
    assert!(bad.is_empty(), "upward imports:\n{}", bad.join("\n"));
}

#[test]
fn an_upward_import_is_caught() {
    // The checker itself: a copy of the tree with one lower module importing a higher one.
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(src.join("lib.rs"), tmp.path().join("lib.rs")).unwrap();
    std::fs::write(tmp.path().join("model.rs"), "use crate::cli::Cli;\n").unwrap();
    std::fs::write(tmp.path().join("cli.rs"), "use crate::{model, state::Query};\n").unwrap();
    std::fs::write(tmp.path().join("state.rs"), "// crate::daemon in a comment is fine\n").unwrap();
    let bad = violations(tmp.path());
    assert_eq!(bad.len(), 1, "{bad:?}");
    assert!(bad[0].contains("model uses cli"), "{bad:?}");
}
