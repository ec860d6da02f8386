//! `inspector attach <pid>`: a live view of a process, refreshed from its attach socket.
//!
//! [`App`] holds what is shown and how keys change it; [`render`] draws it. Both work without
//! a terminal, which is how they are tested (ratatui's test backend).

mod app;
mod master;
mod view;

use std::sync::mpsc;
use std::time::{Duration, Instant};

use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};

pub use app::{App, Column, Key, PoolTotals, ProfileRow, ThreadRow, View, delay_ns};
pub use master::{Action, MasterView, render_master, render_master_text};
pub use view::{render, render_text};

use greenhub_snapshot::attach::DEFAULT_PROFILE_HZ;
use greenhub_snapshot::attach::Summary;
use greenhub_snapshot::{Profile, Snapshot, ThreadStack};

use crate::{Client, InspectError};

/// Runs the TUI on the terminal until the user quits. The process may end meanwhile: the last
/// snapshot stays on screen with the error above it, and the view reconnects if it comes back.
/// A `greenhub-serve` master shows its workers, any of which can be attached to from there.
pub fn run(pid: u32) -> Result<(), String> {
    let mut client = Client::connect(pid).map_err(|e| e.to_string())?;
    if let Ok(summary) = client.summary()
        && summary.workers.is_some()
    {
        return run_master(pid, client, summary);
    }
    run_process(pid, client)
}

/// The master's view: its workers, refreshed each second; Enter runs the process view of
/// the selected worker and comes back when it quits.
fn run_master(pid: u32, mut client: Client, first: Summary) -> Result<(), String> {
    let mut view = MasterView::new(pid);
    view.update(first);
    let mut terminal = ratatui::try_init().map_err(|e| format!("cannot use the terminal: {e}"))?;
    let mut next = Instant::now() + Duration::from_secs(1);
    let result = loop {
        if Instant::now() >= next {
            next = Instant::now() + Duration::from_secs(1);
            match client.summary() {
                Ok(s) => view.update(s),
                Err(e) => {
                    view.error = Some(if exited(pid) {
                        format!("master {pid} exited (q quits)")
                    } else {
                        e.to_string()
                    });
                    if let Ok(c) = Client::connect(pid) {
                        client = c;
                    }
                }
            }
        }
        if let Err(e) = terminal.draw(|f| render_master(f, &view)) {
            break Err(format!("cannot draw: {e}"));
        }
        let wait = next
            .saturating_duration_since(Instant::now())
            .min(Duration::from_millis(250));
        let key = match event::poll(wait) {
            Ok(true) => match event::read() {
                Ok(Event::Key(k)) if k.kind != KeyEventKind::Release => {
                    if k.modifiers.contains(KeyModifiers::CONTROL) && k.code == KeyCode::Char('c') {
                        break Ok(());
                    }
                    map(k.code)
                }
                Ok(_) => None,
                Err(e) => break Err(format!("cannot read the terminal: {e}")),
            },
            Ok(false) => None,
            Err(e) => break Err(format!("cannot read the terminal: {e}")),
        };
        match key.map(|k| view.key(k)) {
            Some(Action::Quit) => break Ok(()),
            Some(Action::Attach(worker)) => {
                ratatui::restore();
                let attached = Client::connect(worker)
                    .map_err(|e| e.to_string())
                    .and_then(|c| run_process(worker, c));
                terminal =
                    ratatui::try_init().map_err(|e| format!("cannot use the terminal: {e}"))?;
                if let Err(e) = attached {
                    view.error = Some(format!("worker {worker}: {e}"));
                }
            }
            _ => {}
        }
    };
    ratatui::restore();
    result
}

/// The process view: its green threads, objects and workers.
fn run_process(pid: u32, client: Client) -> Result<(), String> {
    let fetcher = Fetcher::start(pid, client);
    let mut app = App::new(pid);
    let mut terminal = ratatui::try_init().map_err(|e| format!("cannot use the terminal: {e}"))?;
    let mut next = Instant::now();
    let mut in_flight = false;
    let result = loop {
        if !in_flight && !app.paused && Instant::now() >= next {
            in_flight = fetcher.ask(Ask {
                stack_of: app.stack_wanted(),
                timing: app.timing,
                profile: app.profile_wanted(),
                kill: app.take_kill(),
            });
            if !in_flight {
                break Err("the snapshot reader stopped".into());
            }
        }
        if let Ok((answer, at)) = fetcher.answers.try_recv() {
            in_flight = false;
            next = Instant::now() + app.refresh;
            match answer {
                // Paused while it was on its way: the screen stays as it was paused.
                _ if app.paused => {}
                Ok((s, extras)) => {
                    app.update(s, at);
                    if let Some((id, stack)) = extras.stack {
                        app.set_stack(id, stack);
                    }
                    if let Some(profile) = extras.profile {
                        app.set_profile(profile);
                    }
                    if let Some(killed) = extras.killed {
                        app.set_notice(killed);
                    }
                }
                Err(e) => app.failed(e),
            }
        }
        if let Err(e) = terminal.draw(|f| render(f, &app)) {
            break Err(format!("cannot draw: {e}"));
        }
        // While a snapshot is on its way, look for it often; otherwise sleep until the next
        // refresh, waking for keys.
        let wait = if in_flight {
            Duration::from_millis(15)
        } else {
            next.saturating_duration_since(Instant::now())
                .min(Duration::from_millis(250))
        };
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

/// A thread's stack as the details show it: the stack, or why there is none.
type StackAnswer = (u64, Result<ThreadStack, String>);

/// What the reader thread brings back with a snapshot: the stack and the profile asked for.
struct Extras {
    stack: Option<StackAnswer>,
    profile: Option<Result<Profile, String>>,
    /// What the process said to a kill sent before the snapshot.
    killed: Option<Result<String, String>>,
}

/// What the reader thread brings back.
type Answer = (Result<(Snapshot, Extras), String>, Instant);

/// Reads snapshots on its own thread: with 100,000 green threads in the target a snapshot is
/// tens of megabytes of JSON, and keys must not wait for it.
struct Fetcher {
    ask: mpsc::Sender<Ask>,
    answers: mpsc::Receiver<Answer>,
}

/// What the reader is asked for with each snapshot: the stack of one thread, whether the
/// process should time its threads (for the delay column), a profile, and a confirmed kill to
/// send first.
#[derive(Clone, Copy)]
struct Ask {
    stack_of: Option<u64>,
    timing: bool,
    profile: bool,
    kill: Option<u64>,
}

impl Fetcher {
    fn start(pid: u32, client: Client) -> Fetcher {
        let (ask, asked) = mpsc::channel::<Ask>();
        let (answer, answers) = mpsc::channel();
        std::thread::spawn(move || {
            let mut client = Some(client);
            // Ends when the TUI drops its end.
            for Ask {
                stack_of,
                timing,
                profile,
                kill,
            } in asked
            {
                // A kill goes first, so the snapshot that follows shows its effect.
                let killed = kill.map(|id| match client.as_mut() {
                    Some(c) => c.kill(id, false).map(|a| a.done).map_err(|e| e.to_string()),
                    None => Err(format!("process {pid} is not answering")),
                });
                // Timing is this connection's claim: asked again after a reconnection, given
                // back when it closes.
                if let Some(c) = client.as_mut()
                    && c.timing_claimed() != timing
                {
                    let _ = c.timing(timing);
                }
                // A second of samples before the snapshot, while the profile view is open.
                let profile = profile.then(|| match client.as_mut() {
                    Some(c) => c
                        .profile(1.0, DEFAULT_PROFILE_HZ)
                        .map_err(|e| e.to_string()),
                    None => Err(format!("process {pid} is not answering")),
                });
                let got = fetch(pid, &mut client).map(|snap| {
                    // Only the thread whose details are open: the target reads one stack.
                    let stack = stack_of.map(|id| {
                        let stack = match client.as_mut() {
                            Some(c) => c.stack(id).map_err(|e| e.to_string()),
                            None => Err(format!("process {pid} is not answering")),
                        };
                        (id, stack)
                    });
                    (
                        snap,
                        Extras {
                            stack,
                            profile,
                            killed,
                        },
                    )
                });
                if answer.send((got, Instant::now())).is_err() {
                    break;
                }
            }
        });
        Fetcher { ask, answers }
    }

    /// Asks for a snapshot and what `ask` adds; false if the reader is gone.
    fn ask(&self, ask: Ask) -> bool {
        self.ask.send(ask).is_ok()
    }
}

/// Takes a new snapshot, reconnecting if the connection was lost: the process closes a
/// connection that sat idle while other inspectors wanted its slot (a paused TUI's).
fn fetch(pid: u32, client: &mut Option<Client>) -> Result<Snapshot, String> {
    fetch_once(pid, client).map_err(|e| {
        if exited(pid) {
            format!("process {pid} exited (the last snapshot stays on screen; q quits)")
        } else {
            e
        }
    })
}

/// Whether no process `pid` exists any more.
fn exited(pid: u32) -> bool {
    !std::path::Path::new(&format!("/proc/{pid}")).exists()
}

fn fetch_once(pid: u32, client: &mut Option<Client>) -> Result<Snapshot, String> {
    let mut fresh = false;
    loop {
        if client.is_none() {
            *client = Client::connect(pid).ok();
            fresh = true;
        }
        let Some(c) = client else {
            return Err(format!("process {pid} is not answering"));
        };
        match c.snapshot() {
            Ok(snap) => return Ok(snap),
            Err(InspectError::Io { .. }) if !fresh => *client = None,
            Err(e) => {
                *client = None;
                return Err(e.to_string());
            }
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

#[cfg(test)]
mod tests {
    #[test]
    fn a_target_that_has_ended_is_said_to_have_exited() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        let said = super::fetch(pid, &mut None).unwrap_err();
        assert!(said.contains(&format!("process {pid} exited")), "{said}");
    }
}
