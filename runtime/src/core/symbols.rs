//! Names for code addresses, and the folding of greenhub's own frames out of a stack.
//!
//! Symbols are resolved in this process with the `backtrace` crate: the binary's debug
//! information is loaded the first time a stack is shown, by the thread that shows it (a
//! reader of stacks, or the monitor for a blocked-worker report), never by a worker, and each
//! address is cached once resolved. Frames are folded: the run of greenhub, `may` and standard
//! library frames at the innermost end is cut down to its outermost frame (the greenhub call
//! the program made, such as `Queue::get`), and the run at the outermost end (the spawn
//! machinery) is cut away. A stack whose frames are all of those crates keeps them all.
//!
//! It uses nothing else of the crate.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

use greenhub_snapshot::{StackFrame, ThreadStack};

/// The frames of one address, innermost (inlined) first.
type Resolved = Arc<[StackFrame]>;

/// Resolved addresses. Bounded: cleared when full (a long-running process that loads code
/// keeps resolving what it shows now).
static SYMBOLS: Mutex<Option<HashMap<usize, Resolved>>> = Mutex::new(None);

const MAX_SYMBOLS: usize = 1 << 16;

fn resolve(ip: usize) -> Resolved {
    if let Some(hit) = SYMBOLS.lock().as_ref().and_then(|m| m.get(&ip)) {
        return hit.clone();
    }
    let mut frames = Vec::new();
    // A return address points after its call: the call's own line is one byte earlier.
    backtrace::resolve(ip.saturating_sub(1) as *mut std::ffi::c_void, |symbol| {
        frames.push(StackFrame {
            function: symbol
                .name()
                .map(|n| format!("{n:#}"))
                .unwrap_or_else(|| "?".to_owned()),
            file: symbol.filename().map(|p| p.display().to_string()),
            line: symbol.lineno(),
            address: ip as u64,
        });
    });
    if frames.is_empty() {
        frames.push(StackFrame {
            function: "?".to_owned(),
            file: None,
            line: None,
            address: ip as u64,
        });
    }
    let frames: Resolved = frames.into();
    let mut cache = SYMBOLS.lock();
    let map = cache.get_or_insert_with(HashMap::new);
    if map.len() >= MAX_SYMBOLS {
        map.clear();
    }
    map.insert(ip, frames.clone());
    frames
}

/// The crate a demangled function name belongs to (`<greenhub::X as T>::f` is greenhub's).
fn crate_of(function: &str) -> &str {
    let name = function.trim_start_matches(['<', '&', '*']);
    let name = name
        .strip_prefix("mut ")
        .or_else(|| name.strip_prefix("dyn "))
        .or_else(|| name.strip_prefix("const "))
        .unwrap_or(name);
    name.split("::").next().unwrap_or(name)
}

/// Where this crate's sources are, as its debug information names them.
const OWN_SOURCES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src/");

/// Frames of the machinery a wait and a spawn go through: greenhub's, `may`'s, `generator`'s
/// and the standard library's. An inlined frame's name is often unqualified (line tables
/// keep only the short name), so its source file decides first.
fn machinery(frame: &StackFrame) -> bool {
    if let Some(file) = &frame.file {
        let std_library = file.starts_with("/rustc/") && file.contains("/library/");
        let dependency = ["/may-", "/generator-", "/parking_lot"]
            .iter()
            .any(|dir| file.contains(dir));
        if std_library || dependency || file.starts_with(OWN_SOURCES) {
            return true;
        }
    }
    frame.function == "__rust_try"
        || matches!(
            crate_of(&frame.function),
            "greenhub" | "may" | "generator" | "std" | "core" | "alloc" | "parking_lot"
        )
}

/// The frames of these return addresses, innermost first, with only the spawn machinery at
/// the outer end cut away: what a CPU sample keeps, since its innermost frames are where the
/// time went, greenhub's own included.
pub(crate) fn resolve_inner(ips: &[usize]) -> Vec<StackFrame> {
    let mut frames: Vec<StackFrame> = ips.iter().flat_map(|&ip| resolve(ip).to_vec()).collect();
    if let Some(last) = frames.iter().rposition(|f| !machinery(f)) {
        frames.truncate(last + 1);
    }
    frames
}

/// The stack of these return addresses (innermost first), symbolized and folded.
pub(crate) fn fold(ips: &[usize]) -> ThreadStack {
    fold_frames(ips.iter().flat_map(|&ip| resolve(ip).to_vec()).collect())
}

fn fold_frames(frames: Vec<StackFrame>) -> ThreadStack {
    let Some(first) = frames.iter().position(|f| !machinery(f)) else {
        return ThreadStack { frames, folded: 0 };
    };
    let last = frames.iter().rposition(|f| !machinery(f)).unwrap_or(first);
    // The outermost machinery frame before the program's code is the call it made.
    let start = first.saturating_sub(1);
    let kept = frames[start..=last].to_vec();
    ThreadStack {
        folded: (frames.len() - kept.len()) as u32,
        frames: kept,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(function: &str) -> StackFrame {
        StackFrame {
            function: function.to_owned(),
            file: function
                .starts_with("run<")
                .then(|| format!("{OWN_SOURCES}green/thread.rs")),
            line: None,
            address: 1,
        }
    }

    #[test]
    fn crates_are_told_apart_through_impl_paths() {
        assert_eq!(crate_of("greenhub::sync::queue::Queue<T>::get"), "greenhub");
        assert_eq!(
            crate_of("<greenhub::net::TcpStream as std::io::Read>::read"),
            "greenhub"
        );
        assert_eq!(crate_of("<&mut app::Conn as core::ops::Drop>::drop"), "app");
        assert_eq!(crate_of("app::main::{{closure}}"), "app");
        assert_eq!(crate_of("?"), "?");
    }

    #[test]
    fn machinery_is_folded_at_both_ends_and_the_call_made_is_kept() {
        let names = [
            "greenhub::core::wait::Waiter::park_loop",
            "greenhub::core::wait::Waiter::wait",
            "greenhub::sync::queue::Queue<T>::get",
            "app::consume",
            "core::iter::traits::iterator::Iterator::for_each",
            "app::run",
            "app::main::{{closure}}",
            "core::ops::function::FnOnce::call_once",
            "std::panicking::try",
            "__rust_try",
            "run<u32, app::main::{closure_env#0}>",
        ];
        let stack = fold_frames(names.iter().map(|n| frame(n)).collect());
        let kept: Vec<&str> = stack.frames.iter().map(|f| f.function.as_str()).collect();
        assert_eq!(stack.folded, 6);
        assert_eq!(
            kept,
            [
                "greenhub::sync::queue::Queue<T>::get",
                "app::consume",
                "core::iter::traits::iterator::Iterator::for_each",
                "app::run",
                "app::main::{{closure}}",
            ]
        );
    }

    #[test]
    fn a_stack_of_machinery_only_is_kept_whole() {
        let names = ["greenhub::core::wait::Waiter::wait", "std::panicking::try"];
        let stack = fold_frames(names.iter().map(|n| frame(n)).collect());
        assert_eq!(stack.frames.len(), 2);
        assert_eq!(stack.folded, 0);
    }
}
