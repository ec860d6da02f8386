//! The TUI's views and keys, rendered on ratatui's test backend from snapshots of this very
//! process (a parent with children waiting on an event, a sleeper, a named queue).

use std::time::{Duration, Instant};

use greenhub::inspect::snapshot;
use greenhub_inspector::tui::{App, Column, Key, View, render_text};

struct Scene {
    release: greenhub::Event<(), ()>,
    parent: greenhub::GreenThread<bool>,
    _queue: greenhub::Queue<u32>,
}

impl Scene {
    /// Threads named with `tag`, so that tests running side by side can tell theirs apart.
    fn new(tag: &str) -> Scene {
        let release = greenhub::Event::<(), ()>::new();
        let parent = {
            let release = release.clone();
            let tag = tag.to_owned();
            greenhub::thread::Builder::new()
                .name(format!("{tag}-parent"))
                .spawn(move || {
                    let kids: Vec<_> = ["b", "c", "a"]
                        .iter()
                        .map(|k| {
                            let release = release.clone();
                            greenhub::thread::Builder::new()
                                .name(format!("{tag}-child-{k}"))
                                .spawn(move || release.wait().is_ok())
                                .unwrap()
                        })
                        .collect();
                    kids.into_iter().all(|k| k.wait().unwrap())
                })
                .unwrap()
        };
        let queue = greenhub::Queue::unbounded().named(format!("{tag}-queue"));
        // Until all four wait, a snapshot would catch them starting.
        let give_up = Instant::now() + Duration::from_secs(10);
        while snapshot()
            .threads
            .iter()
            .filter(|t| {
                t.name.as_deref().is_some_and(|n| n.starts_with(tag))
                    && t.state == greenhub::inspect::ThreadState::Waiting
            })
            .count()
            < 4
        {
            assert!(Instant::now() < give_up, "the scene never settled");
            std::thread::sleep(Duration::from_millis(2));
        }
        Scene {
            release,
            parent,
            _queue: queue,
        }
    }

    fn end(self) {
        self.release.set(()).unwrap();
        assert!(self.parent.wait().unwrap());
    }
}

/// A green thread named `name` that sleeps 30 s, once its timer shows in the snapshot.
fn sleeper(name: &str) -> greenhub::GreenThread<Result<(), greenhub::TimedOut>> {
    let t = greenhub::thread::Builder::new()
        .name(name)
        .spawn(|| greenhub::sleep(Duration::from_secs(30)))
        .unwrap();
    while !snapshot().timers.iter().any(|tm| tm.owner == Some(t.id())) {
        std::thread::sleep(Duration::from_millis(2));
    }
    t
}

fn app_with_snapshot() -> App {
    let mut app = App::new(std::process::id());
    app.update(snapshot(), Instant::now());
    app
}

fn screen(app: &App) -> String {
    render_text(app, 180, 45)
}

fn type_filter(app: &mut App, text: &str) {
    app.key(Key::Char('/'));
    for c in text.chars() {
        app.key(Key::Char(c));
    }
    app.key(Key::Enter);
}

fn names(app: &App) -> Vec<(String, usize)> {
    app.thread_rows()
        .iter()
        .map(|r| (r.thread.name.clone().unwrap_or_default(), r.depth))
        .collect()
}

#[test]
fn the_threads_view_shows_header_tabs_and_rows() {
    let scene = Scene::new("view");
    let mut app = app_with_snapshot();
    // Other tests of this file run alongside with threads of their own (up to thousands):
    // only this scene's are sure to be on the first screen.
    type_filter(&mut app, "view-");
    let text = screen(&app);
    for expected in [
        "threads",
        "switches/s",
        "blocked workers now: 0",
        "1 Threads",
        "4 Pools & objects",
        "view-parent",
        "view-child-a",
        "event #",
        "SPAWNED AT",
        "inspector/tests/tui.rs",
    ] {
        assert!(
            text.contains(expected),
            "{expected:?} missing from:\n{text}"
        );
    }
    scene.end();
}

#[test]
fn filter_sort_and_tree_order_the_rows() {
    let scene = Scene::new("keys");
    let mut app = app_with_snapshot();
    type_filter(&mut app, "KEYS-child");
    let by_id: Vec<_> = names(&app).into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        by_id,
        ["keys-child-b", "keys-child-c", "keys-child-a"],
        "by id"
    );
    // Sort by name, then reversed.
    while app.sort != Column::Name {
        app.key(Key::Char('s'));
    }
    let by_name: Vec<_> = names(&app).into_iter().map(|(n, _)| n).collect();
    assert_eq!(by_name, ["keys-child-a", "keys-child-b", "keys-child-c"]);
    app.key(Key::Char('r'));
    let reversed: Vec<_> = names(&app).into_iter().map(|(n, _)| n).collect();
    assert_eq!(reversed, ["keys-child-c", "keys-child-b", "keys-child-a"]);
    app.key(Key::Char('r'));

    // The tree: the parent, then its children (sorted by name) one level in.
    app.key(Key::Esc);
    type_filter(&mut app, "keys-");
    app.key(Key::Char('t'));
    let tree = names(&app);
    let parent_at = tree.iter().position(|(n, _)| n == "keys-parent").unwrap();
    assert_eq!(
        &tree[parent_at..parent_at + 4],
        &[
            ("keys-parent".to_string(), tree[parent_at].1),
            ("keys-child-a".to_string(), tree[parent_at].1 + 1),
            ("keys-child-b".to_string(), tree[parent_at].1 + 1),
            ("keys-child-c".to_string(), tree[parent_at].1 + 1),
        ]
    );
    assert!(screen(&app).contains("tree by parent"));
    // A match in the tree keeps the threads above it.
    app.key(Key::Esc);
    type_filter(&mut app, "keys-child-a");
    assert_eq!(
        names(&app),
        [
            ("keys-parent".to_string(), 0),
            ("keys-child-a".to_string(), 1)
        ]
    );
    app.key(Key::Char('t'));
    assert_eq!(names(&app), [("keys-child-a".to_string(), 0)]);

    // A filter that matches nothing leaves an empty table, not a panic.
    app.key(Key::Esc);
    type_filter(&mut app, "no such thread anywhere");
    assert!(app.thread_rows().is_empty());
    app.key(Key::Enter);
    assert!(!app.detail, "no details of nothing");
    app.key(Key::Down);
    screen(&app);
    scene.end();
}

#[test]
fn details_show_the_parent_chain_and_the_children() {
    let scene = Scene::new("detail");
    let mut app = app_with_snapshot();
    type_filter(&mut app, "detail-parent");
    app.key(Key::Enter);
    assert!(app.detail);
    let lines = app.detail_lines().join("\n");
    assert!(lines.contains("children (3):"), "{lines}");
    assert!(lines.contains("detail-child-a"), "{lines}");
    assert!(screen(&app).contains("details (Enter or Esc closes)"));
    app.key(Key::Esc);
    assert!(!app.detail);

    app.key(Key::Esc);
    type_filter(&mut app, "detail-child-c");
    app.key(Key::Enter);
    let lines = app.detail_lines().join("\n");
    assert!(
        lines.contains("parents:") && lines.contains("\"detail-parent\""),
        "{lines}"
    );
    assert!(lines.contains("waiting on event"), "{lines}");
    scene.end();
}

#[test]
fn the_other_views_list_objects_timers_and_reports() {
    let scene = Scene::new("others");
    let sleeper = sleeper("others-sleeper");
    let mut app = app_with_snapshot();
    app.key(Key::Char('4'));
    assert_eq!(app.view, View::Pools);
    let text = screen(&app);
    assert!(text.contains("others-queue"), "{text}");
    type_filter(&mut app, "others-queue");
    app.key(Key::Enter);
    assert!(app.detail_lines()[0].contains("others-queue"));
    app.key(Key::Esc);
    app.key(Key::Esc);

    app.key(Key::Tab);
    app.key(Key::BackTab);
    app.key(Key::Char('2'));
    assert_eq!(app.view, View::Timers);
    type_filter(&mut app, &format!("#{}", sleeper.id()));
    assert_eq!(app.timer_rows().len(), 1);
    app.key(Key::Enter);
    assert!(
        app.detail_lines().join("\n").contains("others-sleeper"),
        "the timer's owner"
    );
    app.key(Key::Esc);
    for view in ['3', '5'] {
        app.key(Key::Char(view));
        screen(&app);
    }
    sleeper.kill();
    scene.end();
}

#[test]
fn pause_refresh_rate_and_a_lost_process_show_in_the_header() {
    let mut app = app_with_snapshot();
    app.key(Key::Char('p'));
    assert!(app.paused);
    app.key(Key::Char('+'));
    app.key(Key::Char('+'));
    assert_eq!(app.refresh, Duration::from_millis(250));
    for _ in 0..10 {
        app.key(Key::Char('+'));
    }
    assert_eq!(
        app.refresh,
        Duration::from_millis(100),
        "no faster than 100 ms"
    );
    let text = screen(&app);
    assert!(
        text.contains("[paused]") && text.contains("refresh 100ms"),
        "{text}"
    );
    // Switches per second come from two snapshots.
    app.update(snapshot(), Instant::now() + Duration::from_secs(1));
    assert!(app.switches_per_sec.is_some());
    app.failed("process 1 is gone".into());
    assert!(screen(&app).contains("process 1 is gone"));
    app.key(Key::Char('q'));
    assert!(app.quit);
}

#[test]
fn the_rows_follow_every_new_snapshot_under_the_same_filter_and_sort() {
    let scene = Scene::new("fresh");
    let mut app = app_with_snapshot();
    type_filter(&mut app, "fresh-child");
    while app.sort != Column::Name {
        app.key(Key::Char('s'));
    }
    let before: Vec<_> = names(&app).into_iter().map(|(n, _)| n).collect();
    assert_eq!(before, ["fresh-child-a", "fresh-child-b", "fresh-child-c"]);
    app.key(Key::End);
    assert_eq!(app.selected, 2);

    // The children end; the next snapshot must not show them, whatever was shown before.
    scene.end();
    let give_up = Instant::now() + Duration::from_secs(10);
    loop {
        app.update(snapshot(), Instant::now());
        if app.thread_rows().is_empty() {
            break;
        }
        assert!(Instant::now() < give_up, "ended threads still shown");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(app.selected, 0, "the selection follows the rows");
    assert!(screen(&app).contains("0 of"));

    // New threads matching the filter appear at the next snapshot, in the chosen order.
    let again = Scene::new("fresh");
    app.update(snapshot(), Instant::now());
    let after: Vec<_> = names(&app).into_iter().map(|(n, _)| n).collect();
    assert_eq!(after, ["fresh-child-a", "fresh-child-b", "fresh-child-c"]);
    again.end();
}

#[test]
fn many_threads_are_each_shown_once_in_every_order() {
    let release = greenhub::Event::<(), ()>::new();
    let n = 2_000;
    let threads: Vec<_> = (0..n)
        .map(|i| {
            let release = release.clone();
            greenhub::thread::Builder::new()
                .name(format!("many-{}", (i * 7919) % n))
                .spawn(move || release.wait().is_ok())
                .unwrap()
        })
        .collect();
    let give_up = Instant::now() + Duration::from_secs(20);
    let mut app = App::new(std::process::id());
    loop {
        app.update(snapshot(), Instant::now());
        let waiting = app
            .snapshot
            .as_ref()
            .unwrap()
            .threads
            .iter()
            .filter(|t| {
                t.name.as_deref().is_some_and(|n| n.starts_with("many-"))
                    && t.state == greenhub::inspect::ThreadState::Waiting
            })
            .count();
        if waiting == n {
            break;
        }
        assert!(Instant::now() < give_up, "the threads never all waited");
        std::thread::sleep(Duration::from_millis(5));
    }
    type_filter(&mut app, "many-");
    for tree in [false, true] {
        for _ in Column::ALL {
            for _ in 0..2 {
                let rows = app.thread_rows();
                let mut ids: Vec<u64> = rows.iter().map(|r| r.thread.id).collect();
                assert_eq!(ids.len(), n, "every match shown (tree {tree})");
                ids.sort_unstable();
                ids.dedup();
                assert_eq!(ids.len(), n, "none twice (tree {tree}, {:?})", app.sort);
                if app.sort == Column::Name && !tree {
                    let names: Vec<_> = rows.iter().map(|r| r.thread.name.clone()).collect();
                    let mut sorted = names.clone();
                    sorted.sort();
                    if app.reverse {
                        sorted.reverse();
                    }
                    assert_eq!(names, sorted, "sorted by name");
                }
                app.key(Key::Char('r'));
            }
            app.key(Key::Char('s'));
        }
        app.key(Key::Char('t'));
    }
    release.set(()).unwrap();
    for t in threads {
        assert!(t.wait().unwrap());
    }
}

#[test]
fn the_selection_and_its_details_follow_the_thread_not_the_row() {
    let scene = Scene::new("follow");
    let mut app = app_with_snapshot();
    type_filter(&mut app, "follow-child");
    while app.sort != Column::Name {
        app.key(Key::Char('s'));
    }
    // On the second row: follow-child-b.
    app.key(Key::Down);
    assert_eq!(
        app.thread_rows()[app.selected].thread.name.as_deref(),
        Some("follow-child-b")
    );
    app.key(Key::Enter);
    // A new child sorts before it: the row numbers shift, the selection must not.
    let early = greenhub::thread::Builder::new()
        .name("follow-child-0")
        .spawn(|| greenhub::sleep(Duration::from_secs(30)))
        .unwrap();
    let give_up = Instant::now() + Duration::from_secs(10);
    loop {
        app.update(snapshot(), Instant::now());
        if app.thread_rows().len() == 4 {
            break;
        }
        assert!(Instant::now() < give_up, "the new thread never showed");
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(app.selected, 2, "the selection moved with its thread");
    let lines = app.detail_lines().join("\n");
    assert!(lines.contains("\"follow-child-b\""), "{lines}");
    early.kill();
    // Once the thread ends, its open details say so instead of showing another thread.
    scene.end();
    let give_up = Instant::now() + Duration::from_secs(10);
    loop {
        app.update(snapshot(), Instant::now());
        let lines = app.detail_lines().join("\n");
        if lines.contains("has ended") {
            break;
        }
        assert!(
            !lines.contains("follow-child-0"),
            "details jumped to another thread: {lines}"
        );
        assert!(Instant::now() < give_up, "the end was never shown");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn question_mark_shows_every_key_and_any_key_closes_it() {
    let mut app = app_with_snapshot();
    app.key(Key::Char('?'));
    assert!(app.help);
    let text = render_text(&app, 80, 24);
    for key in [
        "Enter", "filter", "sort", "tree", "pause", "quit", "refresh",
    ] {
        assert!(text.contains(key), "{key} missing from the help:\n{text}");
    }
    app.key(Key::Char('x'));
    assert!(!app.help);
    assert!(!app.quit, "the key that closes the help does nothing else");
    assert!(render_text(&app, 80, 24).contains("? help"));
}

#[test]
fn details_of_timers_descriptors_and_reports_are_words_not_debug_output() {
    let sleeper = sleeper("words-sleeper");
    let mut app = app_with_snapshot();
    app.key(Key::Char('2'));
    type_filter(&mut app, &format!("#{}", sleeper.id()));
    app.key(Key::Enter);
    let lines = app.detail_lines().join("\n");
    assert!(lines.contains("kind          sleep"), "{lines}");
    assert!(lines.contains("due           in "), "{lines}");
    assert!(
        !lines.contains("TimerInfo") && !lines.contains('{'),
        "{lines}"
    );
    let text = render_text(&app, 80, 24);
    assert!(!text.contains("Sleep"), "the KIND column in words: {text}");
    sleeper.kill();
}

#[test]
fn at_80_by_24_the_name_keeps_its_width() {
    let scene = Scene::new("narrow-screen-name");
    let mut app = app_with_snapshot();
    type_filter(&mut app, "narrow-screen-name-child");
    let text = render_text(&app, 80, 24);
    assert!(
        text.contains("narrow-screen-name-c"),
        "the name is cut short at 80 columns:\n{text}"
    );
    assert!(
        text.contains("NAME") && text.contains("WAITING ON"),
        "{text}"
    );
    scene.end();
}

#[test]
fn a_database_pool_s_details_open_with_the_size_advisor() {
    let pool = greenhub_dbpool::Pool::builder()
        .name("advised\u{1b}[2J")
        .max_size(2)
        .build(greenhub_dbpool::SqliteConnectionManager::memory())
        .unwrap();
    for _ in 0..10 {
        pool.run(|_| ()).unwrap();
    }
    let mut app = app_with_snapshot();
    app.key(Key::Char('4'));
    type_filter(&mut app, "advised");
    assert!(
        screen(&app).contains("suggested_size 1"),
        "{}",
        screen(&app)
    );
    // Its tpool's objects sort first; the pool comes after them.
    while app.object_rows()[app.selected].kind.name() != "dbpool" {
        app.key(Key::Down);
    }
    app.key(Key::Enter);
    let lines = app.detail_lines();
    let advice = lines
        .iter()
        .find(|l| l.starts_with("advice: "))
        .unwrap_or_else(|| panic!("no advice in {lines:?}"));
    assert!(advice.contains("1 would have been enough"), "{advice}");
    assert!(!lines.join("\n").contains('\u{1b}'), "{lines:?}");
    drop(pool);
}

#[test]
fn with_timing_on_the_threads_view_shows_each_threads_scheduling_delay() {
    use greenhub_inspector::tui::delay_ns;
    // Parked before timing comes on and never woken: no times.
    let idle = sleeper("delay-idle");
    let timing = greenhub::inspect::time_threads();
    // Each yield is a stretch runnable until the worker comes back to it.
    let yielder = greenhub::thread::Builder::new()
        .name("delay-yielder")
        .spawn(|| {
            for _ in 0..50 {
                greenhub::yield_now();
            }
            greenhub::sleep(Duration::from_secs(30))
        })
        .unwrap();
    let give_up = Instant::now() + Duration::from_secs(10);
    while !snapshot()
        .threads
        .iter()
        .any(|t| t.id == yielder.id() && t.times.as_ref().is_some_and(|x| x.runs >= 50))
    {
        assert!(Instant::now() < give_up, "the yields were not timed");
        std::thread::sleep(Duration::from_millis(2));
    }
    let mut app = app_with_snapshot();
    type_filter(&mut app, "delay-");
    let text = screen(&app);
    assert!(text.contains("DELAY"), "{text}");
    let rows = app.thread_rows();
    let of = |id: u64| rows.iter().find(|r| r.thread.id == id).unwrap().thread;
    assert!(delay_ns(of(yielder.id())).is_some());
    assert_eq!(delay_ns(of(idle.id())), None);
    // Sorted by it, longest first: the timed thread comes before the one without times.
    while app.sort != Column::Delay {
        app.key(Key::Char('s'));
    }
    if !app.reverse {
        app.key(Key::Char('r'));
    }
    let order: Vec<u64> = app.thread_rows().iter().map(|r| r.thread.id).collect();
    let at = |id| order.iter().position(|x| *x == id).unwrap();
    assert!(at(yielder.id()) < at(idle.id()), "{order:?}");
    drop(timing);
    yielder.kill();
    idle.kill();
}

/// Burns CPU until `stop`, yielding now and then; its loop calls nothing.
#[inline(never)]
fn burns_in_the_tui_test(stop: &std::sync::atomic::AtomicBool) -> u64 {
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let mut i = 0u32;
        while i < 50_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            i += 1;
        }
        greenhub::yield_now();
    }
    x
}

#[test]
fn the_profile_view_lists_the_top_functions_and_their_stacks() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let stop = Arc::new(AtomicBool::new(false));
    let burner = {
        let stop = stop.clone();
        greenhub::spawn(move || burns_in_the_tui_test(&stop))
    };
    let profile = greenhub::inspect::profile(Duration::from_millis(600), 499);
    stop.store(true, Ordering::Relaxed);
    burner.wait().unwrap();
    let mut app = app_with_snapshot();
    app.key(Key::Char('6'));
    assert!(app.profile_wanted());
    let text = screen(&app);
    assert!(text.contains("taking one"), "{text}");
    app.set_profile(profile.map_err(|e| e.to_string()));
    type_filter(&mut app, "burns_in_the_tui");
    let text = screen(&app);
    for expected in ["6 Profile", "OWN", "TOTAL", "burns_in_the_tui_test", "cpu"] {
        assert!(
            text.contains(expected),
            "{expected:?} missing from:\n{text}"
        );
    }
    let rows = app.profile_rows();
    assert!(rows[0].on_cpu && rows[0].own > 0, "{rows:?}");
    // Enter: the function's share and the stacks it is in.
    app.key(Key::Enter);
    let details = app.detail_lines().join("\n");
    assert!(details.contains("the heaviest stacks"), "{details}");
    assert!(details.contains("tui.rs:"), "{details}");
}

#[test]
fn a_deadlock_shows_in_the_header_and_in_the_details_of_its_threads() {
    let a = std::sync::Arc::new(greenhub::Mutex::new(()).named("tui-left"));
    let b = std::sync::Arc::new(greenhub::Mutex::new(()).named("tui-right"));
    let held = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let spawn_one = |name: &str, first: std::sync::Arc<greenhub::Mutex<()>>, second| {
        let held = held.clone();
        greenhub::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                let _one = first.lock().unwrap();
                held.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                while held.load(std::sync::atomic::Ordering::SeqCst) < 2 {
                    greenhub::sleep(Duration::from_millis(1)).unwrap();
                }
                let second: std::sync::Arc<greenhub::Mutex<()>> = second;
                let _two = second.lock().unwrap();
            })
            .unwrap()
    };
    let left = spawn_one("tui-deadlock-left", a.clone(), b.clone());
    let right = spawn_one("tui-deadlock-right", b.clone(), a.clone());
    let give_up = Instant::now() + Duration::from_secs(60);
    let mut app = App::new(std::process::id());
    loop {
        let snap = snapshot();
        let found = snap
            .deadlocks
            .iter()
            .any(|d| d.threads.iter().any(|t| t.id == left.id()));
        app.update(snap, Instant::now());
        if found {
            break;
        }
        assert!(Instant::now() < give_up, "the deadlock was never reported");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(screen(&app).contains("DEADLOCKED"), "{}", screen(&app));
    type_filter(&mut app, "tui-deadlock-left");
    app.key(Key::Enter);
    let lines = app.detail_lines().join("\n");
    assert!(lines.contains("(cycle): 2 green threads"), "{lines}");
    assert!(lines.contains("\"tui-right\""), "{lines}");
    assert!(lines.contains("\"tui-deadlock-right\""), "{lines}");
    right.kill();
    left.wait().unwrap();
}

#[test]
fn k_asks_before_it_kills_and_any_other_key_cancels() {
    let napper = sleeper("tui-k-napper");
    let mut app = app_with_snapshot();
    type_filter(&mut app, "tui-k-napper");
    app.key(Key::Char('K'));
    assert_eq!(app.confirm_kill, Some(napper.id()));
    let shown = screen(&app);
    assert!(
        shown.contains(&format!("kill green thread #{}", napper.id())) && shown.contains("cancels"),
        "{shown}"
    );
    app.key(Key::Char('n'));
    assert_eq!(app.confirm_kill, None);
    assert_eq!(app.take_kill(), None, "cancelled");
    assert!(screen(&app).contains("not killed"));

    app.key(Key::Char('K'));
    app.key(Key::Char('y'));
    assert_eq!(app.take_kill(), Some(napper.id()));
    assert_eq!(app.take_kill(), None, "sent once");
    app.set_notice(Ok("killed 1 green thread".into()));
    assert!(screen(&app).contains("killed 1 green thread"));
    app.set_notice(Err("no live green thread has id 5\u{1b}[2J".into()));
    let shown = screen(&app);
    assert!(shown.contains("refused: no live green thread"), "{shown}");
    assert!(!shown.contains('\u{1b}'));

    // Not in the threads view: K says what it does instead.
    app.key(Key::Char('2'));
    app.key(Key::Char('K'));
    assert_eq!(app.confirm_kill, None);
    napper.kill();
}

/// Sleeps briefly a few times: its spawn site has running and sleeping time.
fn naps_a_little() {
    for _ in 0..5 {
        greenhub::sleep(Duration::from_millis(2)).unwrap();
    }
}

#[test]
fn the_time_by_site_view_shows_each_site_s_running_delay_and_waits() {
    let timing = greenhub::inspect::time_threads();
    let nappers: Vec<_> = (0..3).map(|_| greenhub::spawn(naps_a_little)).collect();
    for n in nappers {
        n.wait().unwrap();
    }
    let mut app = app_with_snapshot();
    app.key(Key::Char('7'));
    assert_eq!(app.view, View::Sites);
    let site = app
        .site_rows()
        .into_iter()
        .find(|s| s.spawn_site.contains("tui.rs") && s.spent.iter().any(|k| k.kind == "sleep"))
        .cloned()
        .unwrap_or_else(|| panic!("no site of this file:\n{}", screen(&app)));
    let sleep = site.spent.iter().find(|k| k.kind == "sleep").unwrap();
    assert!(
        sleep.count >= 15,
        "three threads, five naps each: {sleep:?}"
    );
    assert!(site.spent.iter().any(|k| k.kind == "running"));
    let shown = screen(&app);
    assert!(
        shown.contains("DELAY P99") && shown.contains("spawn sites"),
        "{shown}"
    );
    type_filter(&mut app, &site.spawn_site);
    app.key(Key::Enter);
    let lines = app.detail_lines().join("\n");
    assert!(
        lines.contains("STRETCHES") && lines.contains("sleep"),
        "{lines}"
    );
    assert!(
        lines.contains("runnable") || lines.contains("running"),
        "{lines}"
    );
    drop(timing);

    // A process that does not time its threads: the view says how to turn timing on.
    let mut untimed = snapshot();
    untimed.timing = false;
    untimed.sites.clear();
    let mut app = App::new(std::process::id());
    app.update(untimed, Instant::now());
    app.key(Key::Char('7'));
    assert!(screen(&app).contains("timing is off"), "{}", screen(&app));
}
