//! Text from a target, made safe to show: a thread or process name is chosen by the program
//! (or by whoever can rename it), and must never drive the terminal it is shown on.

use std::borrow::Cow;

use crate::schema::{Outcome, Snapshot};

/// Whether `c` must not reach a terminal as it is: control characters (escape sequences,
/// bells, newlines) and the marks that reorder text (bidirectional overrides).
fn hidden(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `s` with every control character and text-reordering mark written as an escape
/// (`\u{1b}`, `\n`), and unchanged (not copied) when it has none.
///
/// ```
/// use greenhub_snapshot::escape_controls;
///
/// assert_eq!(escape_controls("worker-1"), "worker-1");
/// assert_eq!(escape_controls("evil\u{1b}[2J"), "evil\\u{1b}[2J");
/// ```
pub fn escape_controls(s: &str) -> Cow<'_, str> {
    if !s.chars().any(hidden) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if hidden(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

fn clean(s: &mut String) {
    if let Cow::Owned(escaped) = escape_controls(s) {
        *s = escaped;
    }
}

fn clean_opt(s: &mut Option<String>) {
    if let Some(s) = s {
        clean(s);
    }
}

impl Snapshot {
    /// Escapes the control characters of every text in the snapshot (names, sites, messages,
    /// counts' names): what a reader does before showing a snapshot it did not make.
    pub fn escape_controls(&mut self) {
        clean(&mut self.process);
        for t in &mut self.threads {
            clean_opt(&mut t.name);
            clean(&mut t.spawn_site);
            clean_opt(&mut t.waiting_on_name);
            for frame in t.stack.iter_mut().flat_map(|s| s.frames.iter_mut()) {
                clean(&mut frame.function);
                clean_opt(&mut frame.file);
            }
        }
        clean_opt(&mut self.stacks_unavailable);
        for site in &mut self.sites {
            clean(&mut site.spawn_site);
            for t in &mut site.spent {
                clean(&mut t.kind);
            }
        }
        for f in &mut self.finished {
            clean_opt(&mut f.name);
            clean(&mut f.spawn_site);
            match &mut f.outcome {
                Outcome::Panicked { message } => clean(message),
                Outcome::NotStarted { reason } => clean(reason),
                Outcome::Returned | Outcome::Killed => {}
            }
        }
        for t in &mut self.timers {
            clean(&mut t.site);
        }
        for b in &mut self.blocked {
            clean_opt(&mut b.name);
            clean_opt(&mut b.spawn_site);
            for frame in b.stack.iter_mut().flat_map(|s| s.frames.iter_mut()) {
                clean(&mut frame.function);
                clean_opt(&mut frame.file);
            }
        }
        for d in &mut self.deadlocks {
            if let crate::DeadlockKind::Pool { pool } = &mut d.kind {
                clean_opt(&mut pool.name);
            }
            for t in &mut d.threads {
                clean_opt(&mut t.name);
                clean(&mut t.spawn_site);
                clean_opt(&mut t.waiting_on_name);
                for h in &mut t.holds {
                    clean_opt(&mut h.name);
                }
                for frame in t.stack.iter_mut().flat_map(|s| s.frames.iter_mut()) {
                    clean(&mut frame.function);
                    clean_opt(&mut frame.file);
                }
            }
        }
        for o in &mut self.objects {
            clean_opt(&mut o.name);
            for map in [&mut o.counts, &mut o.totals] {
                if map.keys().any(|k| k.chars().any(hidden)) {
                    *map = std::mem::take(map)
                        .into_iter()
                        .map(|(k, v)| (escape_controls(&k).into_owned(), v))
                        .collect();
                }
            }
        }
    }
}
