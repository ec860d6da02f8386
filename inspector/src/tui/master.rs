//! `inspector attach <pid>` on a `greenhub-serve` master: its workers (pid, generation,
//! state, age, requests, memory, a held worker thread, why it retires), refreshed each
//! second; Enter attaches to the selected worker, and quitting that view comes back here.
//!
//! [`MasterView`] holds what is shown and how keys change it; [`render_master`] draws it;
//! both work without a terminal.

use greenhub_snapshot::attach::{Summary, WorkerProcess};
use greenhub_snapshot::{escape_controls, format_us};
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Paragraph, Row, Table, TableState};

use crate::tui::Key;

/// What a key asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Nothing beyond the view's own change.
    None,
    /// Leave.
    Quit,
    /// Attach to this worker.
    Attach(u32),
}

/// The master view's state.
#[derive(Debug)]
pub struct MasterView {
    /// The master's pid.
    pub pid: u32,
    /// The last summary read.
    pub summary: Option<Summary>,
    /// Why the last read failed, if it did.
    pub error: Option<String>,
    /// The selected worker's row.
    pub selected: usize,
}

impl MasterView {
    /// An empty view of master `pid`.
    pub fn new(pid: u32) -> MasterView {
        MasterView {
            pid,
            summary: None,
            error: None,
            selected: 0,
        }
    }

    /// The workers shown, in the master's order.
    pub fn workers(&self) -> &[WorkerProcess] {
        self.summary
            .as_ref()
            .and_then(|s| s.workers.as_deref())
            .unwrap_or(&[])
    }

    /// A new summary: the selection stays on the same worker when it is still there.
    pub fn update(&mut self, summary: Summary) {
        let was = self.workers().get(self.selected).map(|w| w.pid);
        self.summary = Some(summary);
        self.error = None;
        let n = self.workers().len();
        self.selected = was
            .and_then(|pid| self.workers().iter().position(|w| w.pid == pid))
            .unwrap_or(self.selected.min(n.saturating_sub(1)));
    }

    /// A key.
    pub fn key(&mut self, key: Key) -> Action {
        let n = self.workers().len();
        match key {
            Key::Char('q') | Key::Esc => return Action::Quit,
            Key::Up | Key::Char('k') => self.selected = self.selected.saturating_sub(1),
            Key::Down | Key::Char('j') => {
                self.selected = (self.selected + 1).min(n.saturating_sub(1));
            }
            Key::Home => self.selected = 0,
            Key::End => self.selected = n.saturating_sub(1),
            Key::Enter => {
                if let Some(w) = self.workers().get(self.selected) {
                    return Action::Attach(w.pid);
                }
            }
            _ => {}
        }
        Action::None
    }
}

/// Draws the view.
pub fn render_master(f: &mut Frame<'_>, view: &MasterView) {
    let [head, body, foot] = Layout::vertical([
        Constraint::Length(2),
        Constraint::Min(3),
        Constraint::Length(1),
    ])
    .areas(f.area());
    let title = match &view.summary {
        Some(s) => format!(
            "greenhub-serve master {}: {} workers, up {}",
            view.pid,
            view.workers().len(),
            format_us(s.uptime_us)
        ),
        None => format!("greenhub-serve master {}", view.pid),
    };
    let mut lines = vec![Line::from(title)];
    if let Some(e) = &view.error {
        lines.push(Line::from(escape_controls(e).into_owned()));
    }
    f.render_widget(Paragraph::new(lines), head);
    let rows = view.workers().iter().map(|w| {
        Row::new(vec![
            w.pid.to_string(),
            w.id.to_string(),
            w.generation.to_string(),
            escape_controls(&w.state).into_owned(),
            format_us(w.age_us),
            w.requests.to_string(),
            format!("{} MiB", w.rss_bytes >> 20),
            if w.blocked_ms > 0 {
                format!("{} ms", w.blocked_ms)
            } else {
                String::new()
            },
            w.retiring
                .as_deref()
                .map(|r| escape_controls(r).into_owned())
                .unwrap_or_default(),
        ])
    });
    let table = Table::new(
        rows,
        [
            Constraint::Length(8),
            Constraint::Length(7),
            Constraint::Length(4),
            Constraint::Length(9),
            Constraint::Length(9),
            Constraint::Length(10),
            Constraint::Length(9),
            Constraint::Length(8),
            Constraint::Min(10),
        ],
    )
    .header(
        Row::new(vec![
            "PID", "WORKER", "GEN", "STATE", "UP", "REQUESTS", "MEMORY", "HELD", "RETIRING",
        ])
        .style(Style::default().add_modifier(Modifier::BOLD)),
    )
    .row_highlight_style(Style::default().add_modifier(Modifier::REVERSED))
    .block(Block::bordered().title("workers"));
    let mut state = TableState::default().with_selected(Some(view.selected));
    f.render_stateful_widget(table, body, &mut state);
    f.render_widget(
        Paragraph::new("↑↓ select · Enter attach to the worker · q quit"),
        foot,
    );
}

/// The view drawn into text, `width` by `height` (for tests and `dump`-like uses).
pub fn render_master_text(view: &MasterView, width: u16, height: u16) -> String {
    crate::tui::view::draw_text(width, height, |f| render_master(f, view))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker(pid: u32, generation: u32, state: &str) -> WorkerProcess {
        WorkerProcess {
            id: u64::from(pid) - 100,
            pid,
            generation,
            state: state.into(),
            age_us: 3_000_000,
            requests: 1234,
            rss_bytes: 21 << 20,
            blocked_ms: 0,
            retiring: None,
        }
    }

    fn summary(workers: Vec<WorkerProcess>) -> Summary {
        Summary {
            schema_version: greenhub_snapshot::SCHEMA_VERSION,
            pid: 100,
            process: "greenhub-serve".into(),
            threads: 0,
            uptime_us: 9_000_000,
            supervised: None,
            workers: Some(workers),
        }
    }

    #[test]
    fn the_workers_show_and_enter_attaches_to_the_selected_one() {
        let mut v = MasterView::new(100);
        v.update(summary(vec![
            worker(101, 1, "ready"),
            worker(102, 2, "starting"),
        ]));
        let text = render_master_text(&v, 100, 10);
        assert!(
            text.contains("greenhub-serve master 100: 2 workers"),
            "{text}"
        );
        assert!(text.contains("101") && text.contains("ready") && text.contains("21 MiB"));
        assert!(text.contains("starting"), "{text}");
        assert_eq!(v.key(Key::Down), Action::None);
        assert_eq!(v.key(Key::Enter), Action::Attach(102));
        // The selection follows its worker when the list changes around it.
        v.update(summary(vec![
            worker(102, 2, "ready"),
            worker(103, 2, "starting"),
        ]));
        assert_eq!(v.key(Key::Enter), Action::Attach(102));
        assert_eq!(v.key(Key::Char('q')), Action::Quit);
        // Its worker gone, the selection stays in range.
        v.update(summary(vec![]));
        assert_eq!(v.key(Key::Enter), Action::None);
    }

    #[test]
    fn texts_from_the_master_are_shown_escaped() {
        let mut v = MasterView::new(100);
        let mut w = worker(101, 1, "ready\x1b[2J");
        w.retiring = Some("reason\x1b]0;owned\x07".into());
        v.update(summary(vec![w]));
        let text = render_master_text(&v, 120, 8);
        assert!(!text.contains('\x1b') && !text.contains('\x07'), "{text:?}");
    }
}
