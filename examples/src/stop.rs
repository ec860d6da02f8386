//! How a long-running example learns it should stop: the first SIGINT (Ctrl-C) or SIGTERM
//! (`kill`, systemd, docker) sets an event, and the example winds down cleanly (its attach
//! socket and temporary files go). A second one ends the process at once: once the first is
//! taken, nothing subscribes any more and the signal's default action is back.

use greenhub::Event;
use greenhub::signal::{SignalError, Signals};

/// An event set with the number of the first SIGINT or SIGTERM.
///
/// ```no_run
/// let stop = greenhub_examples::stop::on_signal().unwrap();
/// let signal = stop.wait().unwrap(); // a green thread or the main thread waits here
/// println!("stopping on {}", greenhub::signal::name(signal));
/// ```
pub fn on_signal() -> Result<Event<i32>, SignalError> {
    let signals = Signals::new([libc::SIGINT, libc::SIGTERM])?;
    let stop = Event::new().named("stop signal");
    let set = stop.clone();
    greenhub::thread::Builder::new()
        .name("stop signal")
        .spawn(move || {
            if let Ok(signal) = signals.wait() {
                drop(signals);
                let _ = set.set(signal);
            }
        })
        .map_err(|e| SignalError::Setup {
            name: "SIGINT, SIGTERM".into(),
            reason: e.to_string(),
        })?;
    Ok(stop)
}
