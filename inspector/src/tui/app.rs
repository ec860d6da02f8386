//! What the TUI shows and how keys change it, apart from any terminal: the views, the sort,
//! the filter, the tree, the selection and the details.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use greenhub_snapshot::ObjectKind;
use greenhub_snapshot::{
    Half, Profile, Snapshot, ThreadInfo, ThreadStack, escape_controls, format_us,
};

/// The kinds the pool crates name (`greenhub-tpool`, `greenhub-dbpool`): the inspector reads
/// them by name, without depending on those crates.
const TPOOL_CALL: &str = "tpool call";
const TPOOL_QUEUE: &str = "tpool queue";
const DBPOOL: &str = "dbpool";

/// The views, in tab order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum View {
    /// Green threads.
    Threads,
    /// Pending timers.
    Timers,
    /// Descriptors green threads wait on.
    Descriptors,
    /// Pools and other objects: tpool, database pools, green pools, servers, queues...
    Pools,
    /// Blocked-worker reports.
    Blocked,
    /// Where CPU time goes and where green threads wait: a profile of the last second, taken
    /// while the view is open.
    Profile,
    /// Where time goes by spawn site while timing is on (`T`): running, runnable (the
    /// scheduling delay) and each kind of wait, as histograms.
    Sites,
}

impl View {
    /// Every view, in tab order.
    pub const ALL: [View; 7] = [
        View::Threads,
        View::Timers,
        View::Descriptors,
        View::Pools,
        View::Blocked,
        View::Profile,
        View::Sites,
    ];

    /// The tab's title.
    pub fn title(self) -> &'static str {
        match self {
            View::Threads => "Threads",
            View::Timers => "Timers",
            View::Descriptors => "Descriptors",
            View::Pools => "Pools & objects",
            View::Blocked => "Blocked workers",
            View::Profile => "Profile",
            View::Sites => "Time by site",
        }
    }
}

/// The columns of the threads view; the sort key is one of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Column {
    /// Thread id.
    Id,
    /// Name.
    Name,
    /// Running, waiting or scheduled.
    State,
    /// What it waits on.
    WaitingOn,
    /// How long it has been in its state.
    For,
    /// Time to the deadline of its wait.
    Deadline,
    /// Sampled run time.
    Run,
    /// Switches.
    Switches,
    /// Mean scheduling delay: time runnable (woken, not yet on a worker) per run, while
    /// timing is on.
    Delay,
    /// Spawn site.
    Site,
}

impl Column {
    /// Every column, left to right.
    pub const ALL: [Column; 10] = [
        Column::Id,
        Column::Name,
        Column::State,
        Column::WaitingOn,
        Column::For,
        Column::Deadline,
        Column::Run,
        Column::Switches,
        Column::Delay,
        Column::Site,
    ];

    /// The column's heading.
    pub fn title(self) -> &'static str {
        match self {
            Column::Id => "ID",
            Column::Name => "NAME",
            Column::State => "STATE",
            Column::WaitingOn => "WAITING ON",
            Column::For => "FOR",
            Column::Deadline => "DEADLINE",
            Column::Run => "RUN",
            Column::Switches => "SWITCHES",
            Column::Delay => "DELAY",
            Column::Site => "SPAWNED AT",
        }
    }

    fn compare(self, a: &ThreadInfo, b: &ThreadInfo) -> Ordering {
        match self {
            Column::Id => a.id.cmp(&b.id),
            Column::Name => a.name.cmp(&b.name),
            Column::State => a.state.name().cmp(b.state.name()),
            Column::WaitingOn => waiting_on(a).cmp(&waiting_on(b)),
            Column::For => a.state_for_us.cmp(&b.state_for_us),
            // No deadline sorts after every deadline.
            Column::Deadline => match (a.deadline_in_us, b.deadline_in_us) {
                (Some(x), Some(y)) => x.cmp(&y),
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (None, None) => Ordering::Equal,
            },
            Column::Run => a.run_time_us.cmp(&b.run_time_us),
            Column::Switches => a.switches.cmp(&b.switches),
            Column::Delay => delay_ns(a).cmp(&delay_ns(b)),
            Column::Site => a.spawn_site.cmp(&b.spawn_site),
        }
        .then(a.id.cmp(&b.id))
    }
}

/// A thread's mean scheduling delay (time runnable per run), while timing is on.
pub fn delay_ns(t: &ThreadInfo) -> Option<u64> {
    t.times
        .as_ref()
        .filter(|x| x.runs > 0)
        .map(|x| x.runnable_ns / x.runs)
}

/// What a thread waits on, as the table shows it.
pub fn waiting_on(t: &ThreadInfo) -> String {
    t.waiting_on.map(|w| w.to_string()).unwrap_or_default()
}

/// A key, as the app understands it (the terminal's key events map onto these).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Key {
    /// A printable character.
    Char(char),
    /// Enter.
    Enter,
    /// Escape.
    Esc,
    /// Backspace.
    Backspace,
    /// Tab (next view).
    Tab,
    /// Shift-Tab (previous view).
    BackTab,
    /// Up arrow.
    Up,
    /// Down arrow.
    Down,
    /// Page up.
    PageUp,
    /// Page down.
    PageDown,
    /// Home.
    Home,
    /// End.
    End,
}

/// A row of the threads view: the thread and its depth in the tree (0 outside tree mode).
#[derive(Clone, Copy, Debug)]
pub struct ThreadRow<'a> {
    /// The thread.
    pub thread: &'a ThreadInfo,
    /// Nesting under its parent in tree mode.
    pub depth: usize,
}

/// Refresh rates the `+` and `-` keys step through.
const RATES: [Duration; 6] = [
    Duration::from_millis(100),
    Duration::from_millis(250),
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(5),
];

/// The TUI's state.
#[derive(Debug)]
pub struct App {
    /// The inspected process.
    pub pid: u32,
    /// The latest snapshot.
    pub snapshot: Option<Snapshot>,
    /// Why the latest refresh failed, if it did (the process may have ended).
    pub error: Option<String>,
    /// Switches per second between the last two snapshots.
    pub switches_per_sec: Option<f64>,
    last_switches: Option<(Instant, u64)>,
    /// The view shown.
    pub view: View,
    /// The threads view's sort column.
    pub sort: Column,
    /// Whether the sort is reversed.
    pub reverse: bool,
    /// The filter: rows that contain it (any case) anywhere.
    pub filter: String,
    /// Whether keys go to the filter (after `/`).
    pub editing_filter: bool,
    /// Threads as a tree by parent.
    pub tree: bool,
    /// The selected row of the current view.
    pub selected: usize,
    /// Whether the details of the selected row are open.
    pub detail: bool,
    /// Whether the help screen is open.
    pub help: bool,
    /// What the selection is on: it stays on that entry when a new snapshot reorders the
    /// rows, and the details keep showing it.
    pinned: Option<Entry>,
    /// Whether refreshing is paused.
    pub paused: bool,
    /// Whether the process is asked to time its threads (key `T`): every switch then reads
    /// the clock, which costs a switch-heavy process, so it is off until asked for.
    pub timing: bool,
    /// Time between refreshes.
    pub refresh: Duration,
    /// Whether the user asked to quit.
    pub quit: bool,
    /// The current view's rows as (index in the snapshot's list, depth in the tree), filtered
    /// and sorted. Kept between frames: with 100,000 threads, building them costs tens of
    /// milliseconds, which a frame or a key press must not pay.
    rows: Vec<(usize, usize)>,
    /// What `rows` was built for; `None` after a new snapshot.
    built: Option<Shape>,
    /// The lowercased text each entry of `search_view` is found by, made when a filter first
    /// needs it and kept until the next snapshot, so that typing a filter stays quick.
    search: Vec<String>,
    search_view: Option<View>,
    /// Thread id to its index in the snapshot.
    by_id: HashMap<u64, usize>,
    /// The last stack read for the details of a thread: its id and the stack, or why none.
    stack: Option<(u64, Result<ThreadStack, String>)>,
    /// The last profile (while the profile view is open), or why there is none.
    profile: Option<Result<Profile, String>>,
    /// Its top functions, on CPU then off CPU.
    profile_rows: Vec<ProfileRow>,
    /// The green thread `K` asked to kill, until `y` confirms it or another key cancels.
    pub confirm_kill: Option<u64>,
    /// A confirmed kill, for the reader to send with its next request.
    kill_wanted: Option<u64>,
    /// What the last act did, or why it failed (shown in the header until the next act).
    pub notice: Option<String>,
}

/// An entry of a view, by what identifies it across snapshots.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Entry {
    Thread(u64),
    Timer(u64),
    Descriptor(i32),
    Object(u64),
    Blocked(u64),
    /// A function of the profile view: its half and a hash of its name.
    Function(bool, u64),
    /// A spawn site of the time-by-site view: a hash of its text.
    Site(u64),
}

/// A row of the profile view: a function with its share of the samples (on CPU) or of the
/// time waited (off CPU).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProfileRow {
    /// Where CPU time goes (true) or where threads wait (false).
    pub on_cpu: bool,
    /// The function, escaped.
    pub function: String,
    /// Weight where it is the innermost frame.
    pub own: u64,
    /// Weight of the stacks it is in.
    pub total: u64,
}

fn name_hash(name: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    name.hash(&mut h);
    h.finish()
}

/// Everything the rows depend on besides the snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Shape {
    view: View,
    sort: Column,
    reverse: bool,
    tree: bool,
    filter: String,
}

impl App {
    /// A fresh state for `pid`: threads view, sorted by id, refreshing every second.
    pub fn new(pid: u32) -> App {
        App {
            pid,
            snapshot: None,
            error: None,
            switches_per_sec: None,
            last_switches: None,
            view: View::Threads,
            sort: Column::Id,
            reverse: false,
            filter: String::new(),
            editing_filter: false,
            tree: false,
            selected: 0,
            detail: false,
            help: false,
            pinned: None,
            paused: false,
            timing: false,
            refresh: Duration::from_secs(1),
            quit: false,
            rows: Vec::new(),
            built: None,
            search: Vec::new(),
            search_view: None,
            by_id: HashMap::new(),
            stack: None,
            profile: None,
            profile_rows: Vec::new(),
            confirm_kill: None,
            kill_wanted: None,
            notice: None,
        }
    }

    /// Whether the reader should take a profile with the next snapshot: while the profile
    /// view is shown.
    pub fn profile_wanted(&self) -> bool {
        self.view == View::Profile
    }

    /// The profile taken with the last snapshot (or why none could be).
    pub fn set_profile(&mut self, profile: Result<Profile, String>) {
        self.profile_rows = match &profile {
            Ok(p) => [(true, Half::OnCpu), (false, Half::OffCpu)]
                .into_iter()
                .flat_map(|(on_cpu, half)| {
                    p.top(half, 100).into_iter().map(move |t| ProfileRow {
                        on_cpu,
                        function: escape_controls(&t.function).into_owned(),
                        own: t.own,
                        total: t.total,
                    })
                })
                .collect(),
            Err(_) => Vec::new(),
        };
        self.profile = Some(profile.map_err(|e| escape_controls(&e).into_owned()));
        self.built = None;
        self.search_view = None;
        self.rebuild();
        self.clamp();
    }

    /// The last profile, if one was taken.
    pub fn profile(&self) -> Option<&Result<Profile, String>> {
        self.profile.as_ref()
    }

    /// The profile view's rows, filtered.
    pub fn profile_rows(&self) -> Vec<&ProfileRow> {
        self.rows_of(View::Profile)
            .iter()
            .filter_map(|&(i, _)| self.profile_rows.get(i))
            .collect()
    }

    /// The thread whose stack the details show, when they are open on a thread: the reader
    /// asks the target for that one stack with each snapshot.
    pub fn stack_wanted(&self) -> Option<u64> {
        match (self.detail, self.detailed()) {
            (true, Some(Entry::Thread(id))) => Some(id),
            _ => None,
        }
    }

    /// The green thread whose kill was confirmed, taken once: the reader sends the request.
    pub fn take_kill(&mut self) -> Option<u64> {
        self.kill_wanted.take()
    }

    /// What the process answered to a kill: shown in the header.
    pub fn set_notice(&mut self, notice: Result<String, String>) {
        self.notice = Some(match notice {
            Ok(done) => escape_controls(&done).into_owned(),
            Err(why) => format!("refused: {}", escape_controls(&why)),
        });
    }

    /// The stack of `thread` as read (or why it could not be): shown in its details.
    pub fn set_stack(&mut self, thread: u64, stack: Result<ThreadStack, String>) {
        self.stack = Some((thread, stack.map_err(|e| escape_controls(&e).into_owned())));
    }

    /// Takes a new snapshot, taken at `at`. Its texts are escaped here: names and sites come
    /// from the target and must not drive the terminal.
    pub fn update(&mut self, mut snapshot: Snapshot, at: Instant) {
        snapshot.escape_controls();
        let switches = snapshot.totals.switches;
        if let Some((then, before)) = self.last_switches {
            let secs = at.saturating_duration_since(then).as_secs_f64();
            if secs > 0.0 {
                self.switches_per_sec = Some(switches.saturating_sub(before) as f64 / secs);
            }
        }
        self.last_switches = Some((at, switches));
        self.by_id = snapshot
            .threads
            .iter()
            .enumerate()
            .map(|(i, t)| (t.id, i))
            .collect();
        self.snapshot = Some(snapshot);
        self.error = None;
        self.built = None;
        self.search_view = None;
        self.rebuild();
        // The selection stays on its entry wherever the new snapshot puts it.
        if let Some(at) = self.pinned.and_then(|e| self.position(e)) {
            self.selected = at;
        }
        self.clamp();
        // Open details keep their entry even once it has gone (they say so); otherwise the
        // selection is on the row shown.
        if !self.detail {
            self.pinned = self.entry_at(self.selected);
        }
    }

    /// The entry on row `row` of the current view.
    fn entry_at(&self, row: usize) -> Option<Entry> {
        let snap = self.snapshot.as_ref()?;
        let &(i, _) = self.rows.get(row)?;
        Some(match self.view {
            View::Threads => Entry::Thread(snap.threads.get(i)?.id),
            View::Timers => Entry::Timer(snap.timers.get(i)?.id),
            View::Descriptors => Entry::Descriptor(snap.descriptors.get(i)?.fd),
            View::Pools => Entry::Object(snap.objects.get(i)?.id),
            View::Blocked => Entry::Blocked(snap.blocked.get(i)?.seq),
            View::Profile => {
                let r = self.profile_rows.get(i)?;
                Entry::Function(r.on_cpu, name_hash(&r.function))
            }
            View::Sites => Entry::Site(name_hash(&snap.sites.get(i)?.spawn_site)),
        })
    }

    /// The row of `entry` in the current view, if it is still there.
    fn position(&self, entry: Entry) -> Option<usize> {
        (0..self.rows.len()).find(|r| self.entry_at(*r) == Some(entry))
    }

    /// The entry the details are about: the pinned one (even if it has left the snapshot).
    fn detailed(&self) -> Option<Entry> {
        self.pinned.or_else(|| self.entry_at(self.selected))
    }

    /// Notes that a refresh failed; the last snapshot stays on screen.
    pub fn failed(&mut self, error: String) {
        self.error = Some(error);
    }

    /// Applies a key.
    pub fn key(&mut self, key: Key) {
        if self.editing_filter {
            match key {
                Key::Char(c) => self.filter.push(c),
                Key::Backspace => {
                    self.filter.pop();
                }
                Key::Enter => self.editing_filter = false,
                Key::Esc => {
                    self.filter.clear();
                    self.editing_filter = false;
                }
                _ => {}
            }
            self.selected = 0;
            self.clamp();
            self.pinned = self.entry_at(self.selected);
            return;
        }
        if self.help {
            // Any key closes the help.
            self.help = false;
            return;
        }
        if let Some(id) = self.confirm_kill.take() {
            // `y` kills; any other key cancels.
            if key == Key::Char('y') {
                self.kill_wanted = Some(id);
                self.notice = Some(format!("sending the kill of green thread #{id}..."));
            } else {
                self.notice = Some(format!("green thread #{id} not killed"));
            }
            return;
        }
        if key == Key::Char('K') {
            match self.detailed() {
                Some(Entry::Thread(id)) if self.view == View::Threads => {
                    self.confirm_kill = Some(id);
                }
                _ => self.notice = Some("K kills the selected green thread (threads view)".into()),
            }
            return;
        }
        if self.detail {
            if matches!(key, Key::Enter | Key::Esc | Key::Char('q')) {
                self.detail = false;
            }
            return;
        }
        let page = 20;
        match key {
            Key::Char('q') => self.quit = true,
            Key::Char('?') | Key::Char('h') => self.help = true,
            Key::Char('/') => self.editing_filter = true,
            Key::Esc => self.filter.clear(),
            Key::Char('t') => self.tree = !self.tree,
            Key::Char('s') => {
                let i = Column::ALL
                    .iter()
                    .position(|c| *c == self.sort)
                    .unwrap_or(0);
                self.sort = Column::ALL[(i + 1) % Column::ALL.len()];
            }
            Key::Char('S') => {
                let i = Column::ALL
                    .iter()
                    .position(|c| *c == self.sort)
                    .unwrap_or(0);
                self.sort = Column::ALL[(i + Column::ALL.len() - 1) % Column::ALL.len()];
            }
            Key::Char('r') => self.reverse = !self.reverse,
            Key::Char('p') | Key::Char(' ') => self.paused = !self.paused,
            Key::Char('T') => self.timing = !self.timing,
            Key::Char('+') => self.step_rate(-1),
            Key::Char('-') => self.step_rate(1),
            Key::Char(c @ '1'..='7') => self.show(View::ALL[c as usize - '1' as usize]),
            Key::Tab => self.step_view(1),
            Key::BackTab => self.step_view(View::ALL.len() - 1),
            Key::Enter => self.detail = self.rows_len() > 0,
            Key::Up => self.selected = self.selected.saturating_sub(1),
            Key::Down => self.selected += 1,
            Key::PageUp => self.selected = self.selected.saturating_sub(page),
            Key::PageDown => self.selected += page,
            Key::Home => self.selected = 0,
            Key::End => self.selected = usize::MAX,
            _ => {}
        }
        self.clamp();
        self.pinned = self.entry_at(self.selected);
    }

    fn step_view(&mut self, by: usize) {
        let i = View::ALL.iter().position(|v| *v == self.view).unwrap_or(0);
        self.show(View::ALL[(i + by) % View::ALL.len()]);
    }

    /// Switches to `view`; a filter belongs to the view it was typed in.
    fn show(&mut self, view: View) {
        if view != self.view {
            self.filter.clear();
        }
        self.view = view;
        self.selected = 0;
        self.pinned = None;
    }

    fn step_rate(&mut self, by: isize) {
        let i = RATES.iter().position(|r| *r >= self.refresh).unwrap_or(3);
        let j = (i as isize + by).clamp(0, RATES.len() as isize - 1) as usize;
        self.refresh = RATES[j];
    }

    fn clamp(&mut self) {
        self.rebuild();
        let n = self.rows.len();
        self.selected = self.selected.min(n.saturating_sub(1));
        // Open details of an entry stay open when it leaves the view (they say it has gone).
        if n == 0 && self.pinned.is_none() {
            self.detail = false;
        }
    }

    fn shape(&self) -> Shape {
        Shape {
            view: self.view,
            sort: self.sort,
            reverse: self.reverse,
            tree: self.tree,
            filter: self.filter.to_lowercase(),
        }
    }

    /// Builds the current view's rows again if the snapshot or anything they depend on
    /// changed since they were built.
    fn rebuild(&mut self) {
        let shape = self.shape();
        if self.built.as_ref() == Some(&shape) {
            return;
        }
        if !shape.filter.is_empty() && self.search_view != Some(shape.view) {
            self.search = self.search_texts(shape.view);
            self.search_view = Some(shape.view);
        }
        self.rows = self.compute_rows(&shape);
        self.built = Some(shape);
    }

    /// The rows for `view`: the kept ones if they are current, else built now.
    fn rows_of(&self, view: View) -> std::borrow::Cow<'_, [(usize, usize)]> {
        let mut shape = self.shape();
        if shape.view == view && self.built.as_ref() == Some(&shape) {
            return std::borrow::Cow::Borrowed(&self.rows);
        }
        shape.view = view;
        std::borrow::Cow::Owned(self.compute_rows(&shape))
    }

    /// The text each entry of `view` is found by, lowercased.
    fn search_texts(&self, view: View) -> Vec<String> {
        let Some(snap) = &self.snapshot else {
            return Vec::new();
        };
        let texts: Vec<String> = match view {
            View::Threads => snap.threads.iter().map(thread_text).collect(),
            View::Timers => snap
                .timers
                .iter()
                .map(|t| {
                    format!(
                        "{} {:?} {} {}",
                        t.id,
                        t.kind,
                        t.owner.map(|o| format!("#{o}")).unwrap_or_default(),
                        t.site
                    )
                })
                .collect(),
            View::Descriptors => snap
                .descriptors
                .iter()
                .map(|d| {
                    format!(
                        "fd {} {} {}",
                        d.fd,
                        d.interest.name(),
                        d.owner.map(|o| format!("#{o}")).unwrap_or_default()
                    )
                })
                .collect(),
            View::Pools => snap.objects.iter().map(|o| o.describe()).collect(),
            View::Profile => self
                .profile_rows
                .iter()
                .map(|r| r.function.clone())
                .collect(),
            View::Sites => snap
                .sites
                .iter()
                .map(|s| {
                    let kinds: Vec<&str> = s.spent.iter().map(|k| k.kind.as_str()).collect();
                    format!("{} {}", s.spawn_site, kinds.join(" "))
                })
                .collect(),
            View::Blocked => snap
                .blocked
                .iter()
                .map(|b| {
                    format!(
                        "#{} {} {}",
                        b.thread,
                        b.name.as_deref().unwrap_or(""),
                        b.spawn_site.as_deref().unwrap_or("")
                    )
                })
                .collect(),
        };
        texts.into_iter().map(|t| t.to_lowercase()).collect()
    }

    /// The indices of `shape.view`'s entries that pass the filter.
    fn kept(&self, shape: &Shape, len: usize) -> Vec<usize> {
        if shape.filter.is_empty() {
            return (0..len).collect();
        }
        let owned;
        let texts: &[String] = if self.search_view == Some(shape.view) {
            &self.search
        } else {
            owned = self.search_texts(shape.view);
            &owned
        };
        (0..len)
            .filter(|i| texts.get(*i).is_some_and(|t| t.contains(&shape.filter)))
            .collect()
    }

    fn compute_rows(&self, shape: &Shape) -> Vec<(usize, usize)> {
        let Some(snap) = &self.snapshot else {
            return Vec::new();
        };
        let flat = |v: Vec<usize>| v.into_iter().map(|i| (i, 0)).collect();
        match shape.view {
            View::Threads => self.compute_thread_rows(snap, shape),
            View::Timers => {
                let mut rows = self.kept(shape, snap.timers.len());
                rows.sort_by_key(|i| (snap.timers[*i].due_in_us, snap.timers[*i].id));
                flat(rows)
            }
            View::Descriptors => {
                let mut rows = self.kept(shape, snap.descriptors.len());
                rows.sort_by_key(|i| {
                    let d = &snap.descriptors[*i];
                    (std::cmp::Reverse(d.waiting_us), d.fd)
                });
                flat(rows)
            }
            View::Pools => {
                let rank = |k: ObjectKind| match k.name() {
                    TPOOL_CALL | TPOOL_QUEUE => 0,
                    DBPOOL => 1,
                    _ if k == ObjectKind::GREENPOOL => 2,
                    // greenhub::net::serve's servers, and greenhub-http's with their
                    // connections and requests in flight in the details.
                    "http server" => 3,
                    _ if k == ObjectKind::SERVER => 3,
                    "pool" => 4,
                    _ => 5,
                };
                let mut rows = self.kept(shape, snap.objects.len());
                rows.sort_by_key(|i| (rank(snap.objects[*i].kind), snap.objects[*i].id));
                flat(rows)
            }
            View::Blocked => {
                let mut rows = self.kept(shape, snap.blocked.len());
                rows.sort_by_key(|i| {
                    let b = &snap.blocked[*i];
                    (!b.ongoing, std::cmp::Reverse(b.seq))
                });
                flat(rows)
            }
            // In the profile's order: on CPU, then off CPU, each by own weight.
            View::Profile => flat(self.kept(shape, self.profile_rows.len())),
            // In the snapshot's order: the sites with the most time first.
            View::Sites => flat(self.kept(shape, snap.sites.len())),
        }
    }

    /// Threads filtered, sorted, and in tree mode ordered parent first with each parent's
    /// children (sorted among themselves) under it; a match keeps its ancestors.
    fn compute_thread_rows(&self, snap: &Snapshot, shape: &Shape) -> Vec<(usize, usize)> {
        let threads = &snap.threads;
        // Sorting by what a thread waits on compares formatted text: format it once per
        // thread, not twice per comparison.
        let waits: Vec<String> = if shape.sort == Column::WaitingOn {
            threads.iter().map(waiting_on).collect()
        } else {
            Vec::new()
        };
        let cmp = |a: &usize, b: &usize| {
            let o = if shape.sort == Column::WaitingOn {
                waits[*a]
                    .cmp(&waits[*b])
                    .then(threads[*a].id.cmp(&threads[*b].id))
            } else {
                shape.sort.compare(&threads[*a], &threads[*b])
            };
            if shape.reverse { o.reverse() } else { o }
        };
        if !shape.tree {
            let mut rows = self.kept(shape, threads.len());
            rows.sort_by(cmp);
            return rows.into_iter().map(|i| (i, 0)).collect();
        }
        let mut children: HashMap<usize, Vec<usize>> = HashMap::new();
        let mut roots = Vec::new();
        for (i, t) in threads.iter().enumerate() {
            match t.parent.and_then(|p| self.by_id.get(&p)) {
                Some(p) => children.entry(*p).or_default().push(i),
                None => roots.push(i),
            }
        }
        roots.sort_by(cmp);
        for list in children.values_mut() {
            list.sort_by(cmp);
        }
        // Iterative: a long chain of spawns must not overflow the inspector's stack.
        let mut order = Vec::with_capacity(threads.len());
        let mut stack: Vec<(usize, usize)> = roots.into_iter().rev().map(|i| (i, 0)).collect();
        while let Some((i, depth)) = stack.pop() {
            order.push((i, depth));
            if let Some(kids) = children.get(&i) {
                stack.extend(kids.iter().rev().map(|k| (*k, depth + 1)));
            }
        }
        if shape.filter.is_empty() {
            return order;
        }
        // Children come after their parent in `order`, so one pass backwards carries matches
        // up to every ancestor.
        let mut shown = vec![false; threads.len()];
        for i in self.kept(shape, threads.len()) {
            shown[i] = true;
        }
        for &(i, _) in order.iter().rev() {
            if shown[i]
                && let Some(p) = threads[i].parent.and_then(|p| self.by_id.get(&p))
            {
                shown[*p] = true;
            }
        }
        order.into_iter().filter(|(i, _)| shown[*i]).collect()
    }

    /// The number of rows of the current view.
    pub fn rows_len(&self) -> usize {
        self.rows_of(self.view).len()
    }

    /// The threads view: filtered, sorted, and in tree mode ordered parent first with each
    /// parent's children (sorted among themselves) under it.
    pub fn thread_rows(&self) -> Vec<ThreadRow<'_>> {
        let Some(snap) = &self.snapshot else {
            return Vec::new();
        };
        self.rows_of(View::Threads)
            .iter()
            .map(|&(i, depth)| ThreadRow {
                thread: &snap.threads[i],
                depth,
            })
            .collect()
    }

    /// The thread with this id in the latest snapshot.
    pub fn thread(&self, id: u64) -> Option<&ThreadInfo> {
        let snap = self.snapshot.as_ref()?;
        self.by_id.get(&id).map(|i| &snap.threads[*i])
    }

    /// The entries of `view`'s list in the snapshot, in the view's order.
    fn entries<T>(&self, view: View, list: impl Fn(&Snapshot) -> &[T]) -> Vec<&T> {
        let Some(snap) = &self.snapshot else {
            return Vec::new();
        };
        let list = list(snap);
        self.rows_of(view).iter().map(|&(i, _)| &list[i]).collect()
    }

    /// The timers view, soonest first.
    pub fn timer_rows(&self) -> Vec<&greenhub_snapshot::TimerInfo> {
        self.entries(View::Timers, |s| &s.timers)
    }

    /// The descriptors view, longest waiting first.
    pub fn descriptor_rows(&self) -> Vec<&greenhub_snapshot::DescriptorInfo> {
        self.entries(View::Descriptors, |s| &s.descriptors)
    }

    /// The pools and objects view: pools first (tpool, database, green pools, servers), then
    /// the rest, each by id.
    pub fn object_rows(&self) -> Vec<&greenhub_snapshot::ObjectInfo> {
        self.entries(View::Pools, |s| &s.objects)
    }

    /// The time-by-site view: the spawn sites with the most time first.
    pub fn site_rows(&self) -> Vec<&greenhub_snapshot::SiteTimes> {
        self.entries(View::Sites, |s| &s.sites)
    }

    /// The blocked-worker reports, ongoing first, then the newest.
    pub fn blocked_rows(&self) -> Vec<&greenhub_snapshot::BlockedInfo> {
        self.entries(View::Blocked, |s| &s.blocked)
    }

    /// The lines of the details of the selected entry. They follow the entry, not the row:
    /// a refresh that moves it keeps showing it, and one that no longer has it says so.
    pub fn detail_lines(&self) -> Vec<String> {
        let Some(snap) = &self.snapshot else {
            return Vec::new();
        };
        let Some(entry) = self.detailed() else {
            return Vec::new();
        };
        match entry {
            Entry::Thread(id) => match self.thread(id) {
                Some(t) => self.thread_detail(snap, t),
                None => vec![format!("green thread #{id} has ended")],
            },
            Entry::Object(id) => {
                let Some(o) = snap.objects.iter().find(|o| o.id == id) else {
                    return vec![format!("object #{id} is gone")];
                };
                let mut lines = vec![o.describe(), String::new()];
                // A database pool's advisor speaks first: the size it would take.
                if o.kind.name() == DBPOOL
                    && let Some(advice) = o
                        .detail
                        .as_ref()
                        .and_then(|d| d.pointer("/advice/summary"))
                        .and_then(|s| s.as_str())
                {
                    lines.push(format!(
                        "advice: {}",
                        greenhub_snapshot::escape_controls(advice)
                    ));
                    lines.push(String::new());
                }
                if let Some(detail) = &o.detail {
                    let text = serde_json::to_string_pretty(detail).unwrap_or_default();
                    lines.extend(text.lines().map(String::from));
                }
                let waiting: Vec<String> = snap
                    .threads
                    .iter()
                    .filter(|t| {
                        matches!(t.waiting_on, Some(greenhub_snapshot::WaitOn::Object { id, .. }) if id == o.id)
                    })
                    .map(ThreadInfo::describe)
                    .collect();
                if !waiting.is_empty() {
                    lines.push(String::new());
                    lines.push(format!("waiting ({}):", waiting.len()));
                    lines.extend(waiting.into_iter().map(|w| format!("  {w}")));
                }
                lines
            }
            Entry::Timer(id) => match snap.timers.iter().find(|t| t.id == id) {
                Some(t) => self.owner_detail(
                    t.owner,
                    vec![
                        format!("timer #{}", t.id),
                        String::new(),
                        format!("kind          {}", timer_kind(t.kind)),
                        format!("due           {}", due(t.due_in_us)),
                        format!("created at    {}", t.site),
                    ],
                ),
                None => vec![format!("timer #{id} has fired or was cancelled")],
            },
            Entry::Descriptor(fd) => match snap.descriptors.iter().find(|d| d.fd == fd) {
                Some(d) => self.owner_detail(
                    d.owner,
                    vec![
                        format!("descriptor {}", d.fd),
                        String::new(),
                        format!("waited for    {}", d.interest.name()),
                        format!("for           {}", format_us(d.waiting_us)),
                    ],
                ),
                None => vec![format!("nobody waits on descriptor {fd} any more")],
            },
            Entry::Function(on_cpu, hash) => self.function_detail(on_cpu, hash),
            Entry::Site(hash) => match snap.sites.iter().find(|s| name_hash(&s.spawn_site) == hash)
            {
                Some(site) => site_detail(site),
                None => vec!["this spawn site has no timed threads any more".into()],
            },
            Entry::Blocked(seq) => match snap.blocked.iter().find(|b| b.seq == seq) {
                Some(b) => self.owner_detail(
                    Some(b.thread),
                    vec![
                        format!(
                            "report {}: green thread #{} kept its worker busy",
                            b.seq, b.thread
                        ),
                        String::new(),
                        format!(
                            "thread        #{} {}",
                            b.thread,
                            b.name.as_deref().unwrap_or("")
                        ),
                        format!("spawned at    {}", b.spawn_site.as_deref().unwrap_or("-")),
                        format!("worker        {} (tid {})", b.worker, b.tid),
                        format!(
                            "busy for      {}{}",
                            format_us(b.duration_us),
                            if b.ongoing { ", still now" } else { "" }
                        ),
                        format!("began         {} ago", format_us(b.started_ago_us)),
                        format!(
                            "why           {}",
                            match (b.cause, b.on_cpu_us) {
                                (Some(c), Some(cpu)) =>
                                    format!("{} ({} on a CPU)", c.name(), format_us(cpu)),
                                (Some(c), None) => c.name().to_string(),
                                _ => "-".to_string(),
                            }
                        ),
                    ],
                ),
                None => vec![format!("report {seq} has left the history")],
            },
        }
    }

    /// Totals of the pools for the header: tpool busy threads and queued calls, database
    /// connections in use, out of, and waiters.
    pub fn pool_totals(&self) -> PoolTotals {
        let mut t = PoolTotals::default();
        let Some(snap) = &self.snapshot else {
            return t;
        };
        let get = |c: &BTreeMap<String, u64>, k: &str| c.get(k).copied().unwrap_or(0);
        for o in &snap.objects {
            match o.kind.name() {
                TPOOL_CALL | TPOOL_QUEUE if o.counts.contains_key("busy") => {
                    t.tpool_busy += get(&o.counts, "busy");
                    t.tpool_queued += get(&o.counts, "queued");
                }
                DBPOOL => {
                    t.db_in_use += get(&o.counts, "in_use");
                    t.db_max += get(&o.counts, "max_size");
                    t.db_waiting += o.waiters as u64;
                }
                _ => {}
            }
        }
        t
    }
}

/// Pool gauges summed for the header.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolTotals {
    /// tpool threads running a call.
    pub tpool_busy: u64,
    /// tpool calls waiting for a thread.
    pub tpool_queued: u64,
    /// Database connections checked out.
    pub db_in_use: u64,
    /// Database pool sizes, summed.
    pub db_max: u64,
    /// Green threads waiting for a connection.
    pub db_waiting: u64,
}

/// Everything a thread's row can be found by.
fn thread_text(t: &ThreadInfo) -> String {
    format!(
        "#{} {} {} {} {}",
        t.id,
        t.name.as_deref().unwrap_or(""),
        t.state.name(),
        waiting_on(t),
        t.spawn_site
    )
}

impl App {
    fn thread_detail(&self, snap: &Snapshot, t: &ThreadInfo) -> Vec<String> {
        let mut lines = vec![
            t.describe(),
            String::new(),
            format!("id            {}", t.id),
            format!("name          {}", t.name.as_deref().unwrap_or("-")),
            format!(
                "state         {} for {}",
                t.state.name(),
                format_us(t.state_for_us)
            ),
            format!(
                "waiting on    {}",
                t.waiting_on.map(|w| w.to_string()).unwrap_or("-".into())
            ),
            format!(
                "deadline      {}",
                match t.deadline_in_us {
                    Some(d) if d >= 0 => format!("in {}", format_us(d as u64)),
                    Some(d) => format!("overdue by {}", format_us(d.unsigned_abs())),
                    None => "-".into(),
                }
            ),
            format!("spawned at    {}", t.spawn_site),
            format!("age           {}", format_us(t.age_us)),
            format!("ran           {}", format_us(t.run_time_us)),
            format!("switches      {}", t.switches),
            format!("stack         {} bytes", t.stack_size),
            format!("kill pending  {}", t.kill_requested),
        ];
        // A deadlock it is in comes before its stack: it says who else waits and on what.
        for d in snap
            .deadlocks
            .iter()
            .filter(|d| d.threads.iter().any(|m| m.id == t.id))
        {
            lines.push(String::new());
            lines.extend(d.describe().lines().map(String::from));
        }
        lines.push(String::new());
        lines.push("stack:".into());
        match &self.stack {
            Some((id, Ok(stack))) if *id == t.id => {
                // Frames show through `Display`, which escapes the target's texts.
                lines.extend(stack.frames.iter().map(|f| format!("  {f}")));
                if stack.folded > 0 {
                    lines.push(format!(
                        "  ({} frames of greenhub's machinery folded)",
                        stack.folded
                    ));
                }
            }
            Some((id, Err(why))) if *id == t.id => lines.push(format!("  ({why})")),
            _ => lines.push("  (reading...)".into()),
        }
        lines.push(String::new());
        lines.push("parents:".into());
        let mut parent = t.parent;
        let mut seen = 0;
        while let Some(p) = parent {
            seen += 1;
            match self.thread(p) {
                Some(pt) if seen < 64 => {
                    lines.push(format!("  {}", pt.describe()));
                    parent = pt.parent;
                }
                _ => {
                    lines.push(format!("  #{p} (ended)"));
                    break;
                }
            }
        }
        if t.parent.is_none() {
            lines.push("  (none: spawned from an OS thread)".into());
        }
        let kids: Vec<&ThreadInfo> = snap
            .threads
            .iter()
            .filter(|c| c.parent == Some(t.id))
            .collect();
        lines.push(String::new());
        lines.push(format!("children ({}):", kids.len()));
        let mut kids: Vec<_> = kids.into_iter().collect();
        kids.sort_by_key(|c| c.id);
        lines.extend(kids.into_iter().map(|c| format!("  {}", c.describe())));
        lines
    }

    /// A function of the profile: its share, then the heaviest stacks it is in.
    fn function_detail(&self, on_cpu: bool, hash: u64) -> Vec<String> {
        let found = self
            .profile_rows
            .iter()
            .find(|r| r.on_cpu == on_cpu && name_hash(&r.function) == hash);
        let (Some(row), Some(Ok(profile))) = (found, &self.profile) else {
            return vec!["not in the latest profile".into()];
        };
        let (entries, unit) = if on_cpu {
            (&profile.on_cpu, "samples")
        } else {
            (&profile.off_cpu, "us waited")
        };
        let mut lines = vec![
            row.function.clone(),
            String::new(),
            format!("own    {} {unit}", row.own),
            format!("total  {} {unit}", row.total),
            String::new(),
            "the heaviest stacks it is in (innermost frame first):".into(),
        ];
        let mut shown = 0;
        for e in entries {
            if shown == 10 {
                break;
            }
            if !e
                .frames
                .iter()
                .any(|f| escape_controls(&f.function) == row.function)
            {
                continue;
            }
            shown += 1;
            lines.push(String::new());
            lines.push(format!(
                "{} {unit}, #{} {} [spawned at {}]",
                e.weight,
                e.thread,
                escape_controls(e.name.as_deref().unwrap_or("")),
                escape_controls(&e.spawn_site)
            ));
            lines.extend(e.frames.iter().map(|f| format!("  {f}")));
        }
        lines
    }

    fn owner_detail(&self, owner: Option<u64>, mut lines: Vec<String>) -> Vec<String> {
        if let Some(t) = owner.and_then(|o| self.thread(o)) {
            lines.push(String::new());
            lines.push("owner:".into());
            lines.push(format!("  {}", t.describe()));
        }
        lines
    }
}

/// A timer's kind in words.
pub(crate) fn timer_kind(kind: greenhub_snapshot::TimerKindInfo) -> &'static str {
    use greenhub_snapshot::TimerKindInfo as K;
    match kind {
        K::Sleep => "sleep",
        K::CallAfter => "call_after",
        K::SpawnAfter => "spawn_after",
        K::Deadline => "deadline",
    }
}

/// When a timer is due: "in 3ms", or "overdue by 2ms".
fn due(us: i64) -> String {
    if us >= 0 {
        format!("in {}", format_us(us as u64))
    } else {
        format!("overdue by {}", format_us(us.unsigned_abs()))
    }
}

/// The details of a spawn site: each kind of time with its stretches, total and quantiles,
/// and a bar of its share of the site's time.
fn site_detail(site: &greenhub_snapshot::SiteTimes) -> Vec<String> {
    let ns = |v: u64| format_us(v / 1000);
    let all: u64 = site.spent.iter().map(|k| k.total_ns).sum::<u64>().max(1);
    let mut lines = vec![
        format!("green threads spawned at {}", site.spawn_site),
        String::new(),
        format!(
            "{:<22} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}  share",
            "TIME", "STRETCHES", "TOTAL", "P50", "P90", "P99", "MAX"
        ),
    ];
    for k in &site.spent {
        let share = k.total_ns as f64 / all as f64;
        let bar = "#".repeat((share * 30.0).round() as usize);
        lines.push(format!(
            "{:<22} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}  {bar} {:.0}%",
            k.kind,
            k.count,
            ns(k.total_ns),
            ns(k.p50_ns),
            ns(k.p90_ns),
            ns(k.p99_ns),
            ns(k.max_ns),
            share * 100.0
        ));
    }
    lines.push(String::new());
    lines.push(
        "running: on a worker; runnable: woken, waiting for a worker (the scheduling delay); \
         the rest: waiting, by what on"
            .into(),
    );
    lines
}
