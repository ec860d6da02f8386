//! Warnings and errors of the runtime itself, and the text of panic payloads: through `log` when a logger is installed,
//! otherwise on standard error, so that they are never lost.

/// Logs a warning; when no logger is installed, prints it so that it is never lost.
pub(crate) fn warn(message: &str) {
    if log::max_level() >= log::LevelFilter::Warn {
        log::warn!("{message}");
    } else {
        eprintln!("{message}");
    }
}

/// Logs an error; when no logger is installed, prints it so that it is never lost.
pub(crate) fn error(message: &str) {
    if log::max_level() >= log::LevelFilter::Error {
        log::error!("{message}");
    } else {
        eprintln!("{message}");
    }
}

/// The text of a panic payload (`&str` and `String` payloads; others are named as such).
pub(crate) fn payload_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&'static str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "<non-string panic payload>".to_string()
    }
}
