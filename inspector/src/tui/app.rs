//! What the TUI shows and how keys change it, apart from any terminal: the views, the sort,
//! the filter, the tree, the selection and the details.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use greenhub::inspect::{format_us, Snapshot, ThreadInfo};
use greenhub::wait::ObjectKind;

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
}

impl View {
    /// Every view, in tab order.
    pub const ALL: [View; 5] = [
        View::Threads,
        View::Timers,
        View::Descriptors,
        View::Pools,
        View::Blocked,
    ];

    /// The tab's title.
    pub fn title(self) -> &'static str {
        match self {
            View::Threads => "Threads",
            View::Timers => "Timers",
            View::Descriptors => "Descriptors",
            View::Pools => "Pools & objects",
            View::Blocked => "Blocked workers",
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
    /// Spawn site.
    Site,
}

impl Column {
    /// Every column, left to right.
    pub const ALL: [Column; 9] = [
        Column::Id,
        Column::Name,
        Column::State,
        Column::WaitingOn,
        Column::For,
        Column::Deadline,
        Column::Run,
        Column::Switches,
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
            Column::Site => a.spawn_site.cmp(&b.spawn_site),
        }
        .then(a.id.cmp(&b.id))
    }
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
    /// Whether refreshing is paused.
    pub paused: bool,
    /// Time between refreshes.
    pub refresh: Duration,
    /// Whether the user asked to quit.
    pub quit: bool,
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
            paused: false,
            refresh: Duration::from_secs(1),
            quit: false,
        }
    }

    /// Takes a new snapshot, taken at `at`.
    pub fn update(&mut self, snapshot: Snapshot, at: Instant) {
        let switches = snapshot.totals.switches;
        if let Some((then, before)) = self.last_switches {
            let secs = at.saturating_duration_since(then).as_secs_f64();
            if secs > 0.0 {
                self.switches_per_sec = Some(switches.saturating_sub(before) as f64 / secs);
            }
        }
        self.last_switches = Some((at, switches));
        self.snapshot = Some(snapshot);
        self.error = None;
        self.clamp();
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
            Key::Char('+') => self.step_rate(-1),
            Key::Char('-') => self.step_rate(1),
            Key::Char(c @ '1'..='5') => self.show(View::ALL[c as usize - '1' as usize]),
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
    }

    fn step_rate(&mut self, by: isize) {
        let i = RATES.iter().position(|r| *r >= self.refresh).unwrap_or(3);
        let j = (i as isize + by).clamp(0, RATES.len() as isize - 1) as usize;
        self.refresh = RATES[j];
    }

    fn clamp(&mut self) {
        let n = self.rows_len();
        self.selected = self.selected.min(n.saturating_sub(1));
        if n == 0 {
            self.detail = false;
        }
    }

    fn matches(&self, text: &str) -> bool {
        self.filter.is_empty() || text.to_lowercase().contains(&self.filter.to_lowercase())
    }

    /// The rows of the current view, filtered (and sorted).
    pub fn rows_len(&self) -> usize {
        match self.view {
            View::Threads => self.thread_rows().len(),
            View::Timers => self.timer_rows().len(),
            View::Descriptors => self.descriptor_rows().len(),
            View::Pools => self.object_rows().len(),
            View::Blocked => self.blocked_rows().len(),
        }
    }

    /// The threads view: filtered, sorted, and in tree mode ordered parent first with each
    /// parent's children (sorted among themselves) under it.
    pub fn thread_rows(&self) -> Vec<ThreadRow<'_>> {
        let Some(snap) = &self.snapshot else {
            return Vec::new();
        };
        let cmp = |a: &&ThreadInfo, b: &&ThreadInfo| {
            let o = self.sort.compare(a, b);
            if self.reverse {
                o.reverse()
            } else {
                o
            }
        };
        let keep = |t: &ThreadInfo| self.matches(&thread_text(t));
        if !self.tree {
            let mut rows: Vec<&ThreadInfo> = snap.threads.iter().filter(|t| keep(t)).collect();
            rows.sort_by(cmp);
            return rows
                .into_iter()
                .map(|thread| ThreadRow { thread, depth: 0 })
                .collect();
        }
        let ids: HashMap<u64, &ThreadInfo> = snap.threads.iter().map(|t| (t.id, t)).collect();
        let mut children: HashMap<u64, Vec<&ThreadInfo>> = HashMap::new();
        let mut roots = Vec::new();
        for t in &snap.threads {
            match t.parent.filter(|p| ids.contains_key(p)) {
                Some(p) => children.entry(p).or_default().push(t),
                None => roots.push(t),
            }
        }
        roots.sort_by(cmp);
        for list in children.values_mut() {
            list.sort_by(cmp);
        }
        // Iterative: a long chain of spawns must not overflow the inspector's stack.
        let mut order = Vec::with_capacity(snap.threads.len());
        let mut stack: Vec<(&ThreadInfo, usize)> =
            roots.into_iter().rev().map(|t| (t, 0)).collect();
        while let Some((t, depth)) = stack.pop() {
            order.push(ThreadRow { thread: t, depth });
            if let Some(kids) = children.get(&t.id) {
                stack.extend(kids.iter().rev().map(|k| (*k, depth + 1)));
            }
        }
        if self.filter.is_empty() {
            return order;
        }
        // A match keeps its ancestors, so that it is seen where it hangs. Children come after
        // their parent in `order`, so one pass backwards carries matches up.
        let mut shown: HashMap<u64, bool> = HashMap::new();
        for row in order.iter().rev() {
            let t = row.thread;
            let own = keep(t) || shown.get(&t.id).copied().unwrap_or(false);
            shown.insert(t.id, own);
            if own {
                if let Some(p) = t.parent {
                    shown.insert(p, true);
                }
            }
        }
        order
            .into_iter()
            .filter(|r| shown.get(&r.thread.id).copied().unwrap_or(false))
            .collect()
    }

    /// The timers view, soonest first.
    pub fn timer_rows(&self) -> Vec<&greenhub::inspect::TimerInfo> {
        let Some(snap) = &self.snapshot else {
            return Vec::new();
        };
        let mut rows: Vec<_> = snap
            .timers
            .iter()
            .filter(|t| {
                self.matches(&format!(
                    "{} {:?} {} {}",
                    t.id,
                    t.kind,
                    t.owner.map(|o| format!("#{o}")).unwrap_or_default(),
                    t.site
                ))
            })
            .collect();
        rows.sort_by_key(|t| (t.due_in_us, t.id));
        rows
    }

    /// The descriptors view, longest waiting first.
    pub fn descriptor_rows(&self) -> Vec<&greenhub::inspect::DescriptorInfo> {
        let Some(snap) = &self.snapshot else {
            return Vec::new();
        };
        let mut rows: Vec<_> = snap
            .descriptors
            .iter()
            .filter(|d| {
                self.matches(&format!(
                    "fd {} {} {}",
                    d.fd,
                    d.interest.name(),
                    d.owner.map(|o| format!("#{o}")).unwrap_or_default()
                ))
            })
            .collect();
        rows.sort_by_key(|d| (std::cmp::Reverse(d.waiting_us), d.fd));
        rows
    }

    /// The pools and objects view: pools first (tpool, database, green pools, servers), then
    /// the rest, each by id.
    pub fn object_rows(&self) -> Vec<&greenhub::inspect::ObjectInfo> {
        let Some(snap) = &self.snapshot else {
            return Vec::new();
        };
        let rank = |k: ObjectKind| match k {
            ObjectKind::TpoolCall | ObjectKind::TpoolQueue => 0,
            ObjectKind::DbPool => 1,
            ObjectKind::GreenPool => 2,
            ObjectKind::Server => 3,
            _ => 4,
        };
        let mut rows: Vec<_> = snap
            .objects
            .iter()
            .filter(|o| self.matches(&o.describe()))
            .collect();
        rows.sort_by_key(|o| (rank(o.kind), o.id));
        rows
    }

    /// The blocked-worker reports, ongoing first, then the newest.
    pub fn blocked_rows(&self) -> Vec<&greenhub::inspect::BlockedInfo> {
        let Some(snap) = &self.snapshot else {
            return Vec::new();
        };
        let mut rows: Vec<_> = snap
            .blocked
            .iter()
            .filter(|b| {
                self.matches(&format!(
                    "#{} {} {}",
                    b.thread,
                    b.name.as_deref().unwrap_or(""),
                    b.spawn_site.as_deref().unwrap_or("")
                ))
            })
            .collect();
        rows.sort_by_key(|b| (!b.ongoing, std::cmp::Reverse(b.seq)));
        rows
    }

    /// The lines of the details of the selected row.
    pub fn detail_lines(&self) -> Vec<String> {
        let Some(snap) = &self.snapshot else {
            return Vec::new();
        };
        match self.view {
            View::Threads => {
                let rows = self.thread_rows();
                let Some(row) = rows.get(self.selected) else {
                    return Vec::new();
                };
                thread_detail(snap, row.thread)
            }
            View::Pools => {
                let rows = self.object_rows();
                let Some(o) = rows.get(self.selected) else {
                    return Vec::new();
                };
                let mut lines = vec![o.describe(), String::new()];
                if let Some(detail) = &o.detail {
                    let text = serde_json::to_string_pretty(detail).unwrap_or_default();
                    lines.extend(text.lines().map(String::from));
                }
                let waiting: Vec<String> = snap
                    .threads
                    .iter()
                    .filter(|t| {
                        matches!(t.waiting_on, Some(greenhub::wait::WaitOn::Object { id, .. }) if id == o.id)
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
            View::Timers => self
                .timer_rows()
                .get(self.selected)
                .map(|t| owner_detail(snap, t.owner, format!("{t:#?}")))
                .unwrap_or_default(),
            View::Descriptors => self
                .descriptor_rows()
                .get(self.selected)
                .map(|d| owner_detail(snap, d.owner, format!("{d:#?}")))
                .unwrap_or_default(),
            View::Blocked => self
                .blocked_rows()
                .get(self.selected)
                .map(|b| owner_detail(snap, Some(b.thread), format!("{b:#?}")))
                .unwrap_or_default(),
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
            match o.kind {
                ObjectKind::TpoolCall | ObjectKind::TpoolQueue if o.counts.contains_key("busy") => {
                    t.tpool_busy += get(&o.counts, "busy");
                    t.tpool_queued += get(&o.counts, "queued");
                }
                ObjectKind::DbPool => {
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

fn thread_detail(snap: &Snapshot, t: &ThreadInfo) -> Vec<String> {
    let by_id: HashMap<u64, &ThreadInfo> = snap.threads.iter().map(|t| (t.id, t)).collect();
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
        String::new(),
        "parents:".into(),
    ];
    let mut parent = t.parent;
    let mut seen = 0;
    while let Some(p) = parent {
        seen += 1;
        match by_id.get(&p) {
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
    let kids: Vec<&&ThreadInfo> = by_id.values().filter(|c| c.parent == Some(t.id)).collect();
    lines.push(String::new());
    lines.push(format!("children ({}):", kids.len()));
    let mut kids: Vec<_> = kids.into_iter().collect();
    kids.sort_by_key(|c| c.id);
    lines.extend(kids.into_iter().map(|c| format!("  {}", c.describe())));
    lines
}

fn owner_detail(snap: &Snapshot, owner: Option<u64>, what: String) -> Vec<String> {
    let mut lines: Vec<String> = what.lines().map(String::from).collect();
    if let Some(t) = owner.and_then(|o| snap.threads.iter().find(|t| t.id == o)) {
        lines.push(String::new());
        lines.push("owner:".into());
        lines.push(format!("  {}", t.describe()));
    }
    lines
}
