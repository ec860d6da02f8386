//! The runtime's source keeps its layers: every `crate::` path in a file names a layer at or
//! below the file's own (core, observe, start, green, sync, net, process, testing, lowest first), never an item
//! the crate root re-exports, and no two files import each other, directly or round a longer
//! circle. It reads the source as text: `use crate::` lines and `crate::` paths in code,
//! comments and doc comments left out.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const LAYERS: [&str; 8] = [
    "core", "observe", "start", "green", "sync", "net", "process", "testing",
];

fn rank(layer: &str) -> Option<usize> {
    LAYERS.iter().position(|l| *l == layer)
}

/// The module path of a source file under `src/`: `core/wait.rs` is `core::wait`,
/// `net/mod.rs` is `net`, `start.rs` is `start`.
fn module_of(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts
}

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of a line: what comes before a `//` that is not inside a string.
fn code(line: &str) -> &str {
    let mut in_str = false;
    let bytes = line.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if in_str => i += 1,
            b'"' => in_str = !in_str,
            b'/' if !in_str && bytes.get(i + 1) == Some(&b'/') => return &line[..i],
            _ => {}
        }
        i += 1;
    }
    line
}

/// A source file's code, comments left out.
fn code_of(file: &Path) -> String {
    std::fs::read_to_string(file)
        .unwrap()
        .lines()
        .map(code)
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every path the text names after `crate::`, as its segments (`use crate::{a::b, c}` gives
/// `a::b` and `c`).
fn crate_paths(text: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("crate::") {
        let before = rest[..at].chars().last();
        rest = &rest[at + "crate::".len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$') {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            let end = matching_brace(group);
            for item in split_top(&group[..end]) {
                out.push(segments(item));
            }
        } else {
            out.push(segments(rest));
        }
    }
    out
}

fn matching_brace(s: &str) -> usize {
    let mut depth = 0;
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => return i,
            '}' => depth -= 1,
            _ => {}
        }
    }
    s.len()
}

fn split_top(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                out.push(s[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(s[start..].trim());
    out.into_iter().filter(|s| !s.is_empty()).collect()
}

fn segments(s: &str) -> Vec<String> {
    let path: String = s
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
        .collect();
    path.split("::")
        .filter(|p| !p.is_empty())
        .map(String::from)
        .collect()
}

#[test]
fn imports_run_one_way_and_never_in_a_circle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut all = Vec::new();
    files(&src, &mut all);
    all.sort();
    let modules: BTreeSet<Vec<String>> = all
        .iter()
        .map(|f| module_of(f.strip_prefix(&src).unwrap()))
        .collect();
    let mut problems = Vec::new();
    let mut edges = Edges::new();
    for file in &all {
        let rel = file.strip_prefix(&src).unwrap();
        let me = module_of(rel);
        if me == ["lib"] {
            continue; // the crate root re-exports from every layer
        }
        let my_rank = rank(&me[0]).unwrap_or_else(|| {
            panic!(
                "{} is in no layer: put it in one of {LAYERS:?}",
                rel.display()
            )
        });
        let text = code_of(file);
        for path in crate_paths(&text) {
            let Some(first) = path.first() else { continue };
            let Some(their_rank) = rank(first) else {
                problems.push(format!(
                    "{}: `crate::{}` goes through the crate root; name the layer's module",
                    rel.display(),
                    path.join("::")
                ));
                continue;
            };
            if their_rank > my_rank {
                problems.push(format!(
                    "{}: `crate::{}` imports from `{first}`, a layer above `{}`",
                    rel.display(),
                    path.join("::"),
                    me[0]
                ));
            }
            // The file imported: the longest prefix of the path that is a module.
            let target = (1..=path.len())
                .rev()
                .map(|n| path[..n].to_vec())
                .find(|p| modules.contains(p));
            if let Some(target) = target.filter(|t| *t != me) {
                edges.entry(me.clone()).or_default().insert(target);
            }
        }
    }
    problems.extend(circles(&edges));
    assert!(
        problems.is_empty(),
        "the runtime's layers are broken:\n{}",
        problems.join("\n")
    );
    // The check sees the imports it is meant to see.
    assert!(
        edges[&vec!["core".to_string(), "wait".to_string()]]
            .contains(&vec!["core".to_string(), "token".to_string()])
    );
}

type Edges = BTreeMap<Vec<String>, BTreeSet<Vec<String>>>;

/// Every circle of imports between files, found by a depth-first search that reports each
/// back edge it meets.
fn circles(edges: &Edges) -> Vec<String> {
    fn visit(
        at: &Vec<String>,
        edges: &Edges,
        stack: &mut Vec<Vec<String>>,
        done: &mut BTreeSet<Vec<String>>,
        found: &mut Vec<String>,
    ) {
        if done.contains(at) {
            return;
        }
        if let Some(i) = stack.iter().position(|s| s == at) {
            let circle: Vec<String> = stack[i..]
                .iter()
                .chain(std::iter::once(at))
                .map(|m| m.join("::"))
                .collect();
            found.push(format!("files import each other: {}", circle.join(" -> ")));
            return;
        }
        stack.push(at.clone());
        for next in edges.get(at).into_iter().flatten() {
            visit(next, edges, stack, done, found);
        }
        stack.pop();
        done.insert(at.clone());
    }
    let (mut done, mut found) = (BTreeSet::new(), Vec::new());
    for from in edges.keys() {
        visit(from, edges, &mut Vec::new(), &mut done, &mut found);
    }
    found
}

/// The crates built on the runtime keep no circles between their files either. Their root
/// (`lib.rs`) is left out: it declares the modules and holds the errors they all return.
#[test]
fn the_pool_crates_import_in_one_direction() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut problems = Vec::new();
    for krate in ["tpool", "dbpool", "pg", "http"] {
        let src = root.join(krate).join("src");
        let mut all = Vec::new();
        files(&src, &mut all);
        let modules: BTreeSet<Vec<String>> = all
            .iter()
            .map(|f| module_of(f.strip_prefix(&src).unwrap()))
            .collect();
        let mut edges = Edges::new();
        for file in &all {
            let me = module_of(file.strip_prefix(&src).unwrap());
            if me == ["lib"] {
                continue;
            }
            let text = code_of(file);
            for path in crate_paths(&text) {
                let target = (1..=path.len())
                    .rev()
                    .map(|n| path[..n].to_vec())
                    .find(|p| modules.contains(p) && *p != ["lib"]);
                if let Some(target) = target.filter(|t| *t != me) {
                    edges.entry(me.clone()).or_default().insert(target);
                }
            }
        }
        assert!(
            !edges.is_empty(),
            "{krate}: no imports seen in {}",
            src.display()
        );
        problems.extend(circles(&edges).into_iter().map(|p| format!("{krate}: {p}")));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_checker_finds_what_it_looks_for() {
    let paths = crate_paths(code(
        "use crate::{core::wait::{self, Waiter}, sync::event}; // crate::net::x",
    ));
    assert_eq!(
        paths,
        vec![
            vec!["core".to_string(), "wait".to_string()],
            vec!["sync".to_string(), "event".to_string()]
        ]
    );
    assert_eq!(
        crate_paths("let x = crate::green::time::sleep(d); $crate::x; mycrate::y"),
        vec![vec![
            "green".to_string(),
            "time".to_string(),
            "sleep".to_string()
        ]]
    );
}
