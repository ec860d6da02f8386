//! Starting the runtime with no descriptor free: `init` says so as a value, starts nothing,
//! and succeeds once descriptors are free. Alone in its binary: it uses up the process's
//! descriptors before anything starts the runtime.

use greenhub::config::{Config, ConfigError};

mod common;

#[test]
fn init_without_descriptors_is_an_error_and_can_be_retried() {
    let hoard = common::use_up_descriptors();
    let err = Config::new()
        .workers(2)
        .attach(false)
        .init()
        .expect_err("the event loop needs more than one descriptor");
    assert!(matches!(err, ConfigError::Start(_)), "{err:?}");
    let said = err.to_string();
    assert!(
        said.contains("could not start") && said.contains("open-file limit"),
        "{said}"
    );
    drop(hoard);

    // `AlreadyStarted` here would mean the failed start left a half-started runtime.
    Config::new()
        .workers(2)
        .attach(false)
        .init()
        .expect("descriptors are free again, and nothing was started");
    let (tx, rx) = std::sync::mpsc::channel();
    for i in 0..100u32 {
        let tx = tx.clone();
        greenhub::spawn(move || tx.send(i).unwrap());
    }
    drop(tx);
    let mut got: Vec<u32> = rx.iter().collect();
    got.sort_unstable();
    assert_eq!(
        got,
        (0..100).collect::<Vec<_>>(),
        "every green thread ran once"
    );
}
