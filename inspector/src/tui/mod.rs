//! `inspector attach <pid>`: a live view of a process, refreshed from its attach socket.
//!
//! [`App`] holds what is shown and how keys change it; [`render`] draws it. Both work without
//! a terminal, which is how they are tested (ratatui's test backend).

mod app;
mod view;

use std::time::{Duration, Instant};

use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};

pub use app::{App, Column, Key, PoolTotals, ThreadRow, View};
pub use view::render;

use crate::Client;

/// Runs the TUI on the terminal until the user quits. The process may end meanwhile: the last
/// snapshot stays on screen with the error above it, and the view reconnects if it comes back.
pub fn run(pid: u32) -> Result<(), String> {
    let mut client = Some(Client::connect(pid).map_err(|e| e.to_string())?);
    let mut app = App::new(pid);
    let mut terminal = ratatui::try_init().map_err(|e| format!("cannot use the terminal: {e}"))?;
    let mut next = Instant::now();
    let result = loop {
        if Instant::now() >= next && !app.paused {
            refresh(&mut app, &mut client);
            next = Instant::now() + app.refresh;
        }
        if let Err(e) = terminal.draw(|f| render(f, &app)) {
            break Err(format!("cannot draw: {e}"));
        }
        let wait = next
            .saturating_duration_since(Instant::now())
            .min(Duration::from_millis(250));
        match event::poll(wait) {
            Ok(true) => match event::read() {
                Ok(Event::Key(k)) if k.kind != KeyEventKind::Release => {
                    if k.modifiers.contains(KeyModifiers::CONTROL) && k.code == KeyCode::Char('c') {
                        break Ok(());
                    }
                    if let Some(key) = map(k.code) {
                        app.key(key);
                    }
                }
                Ok(_) => {}
                Err(e) => break Err(format!("cannot read the terminal: {e}")),
            },
            Ok(false) => {}
            Err(e) => break Err(format!("cannot read the terminal: {e}")),
        }
        if app.quit {
            break Ok(());
        }
    };
    ratatui::restore();
    result
}

/// Takes a new snapshot, reconnecting if the connection was lost.
fn refresh(app: &mut App, client: &mut Option<Client>) {
    if client.is_none() {
        *client = Client::connect(app.pid).ok();
    }
    let Some(c) = client else {
        app.failed(format!("process {} is not answering", app.pid));
        return;
    };
    match c.snapshot() {
        Ok(s) => app.update(s, Instant::now()),
        Err(e) => {
            app.failed(e.to_string());
            *client = None;
        }
    }
}

fn map(code: KeyCode) -> Option<Key> {
    Some(match code {
        KeyCode::Char(c) => Key::Char(c),
        KeyCode::Enter => Key::Enter,
        KeyCode::Esc => Key::Esc,
        KeyCode::Backspace => Key::Backspace,
        KeyCode::Tab => Key::Tab,
        KeyCode::BackTab => Key::BackTab,
        KeyCode::Up => Key::Up,
        KeyCode::Down => Key::Down,
        KeyCode::PageUp => Key::PageUp,
        KeyCode::PageDown => Key::PageDown,
        KeyCode::Home => Key::Home,
        KeyCode::End => Key::End,
        _ => return None,
    })
}
