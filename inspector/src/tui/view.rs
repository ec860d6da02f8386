//! Drawing the [`App`] on a ratatui frame: header, tabs, the current view's table, the
//! footer, and the details over them.

use ratatui::backend::TestBackend;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Modifier, Style, Stylize};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Cell, Clear, Paragraph, Row, Table, Tabs};
use ratatui::{Frame, Terminal};

use greenhub_snapshot::{ThreadState, format_us};

use super::app::{App, Column, View, delay_ns, timer_kind, waiting_on};

/// Draws the whole screen.
pub fn render(frame: &mut Frame<'_>, app: &App) {
    let [header, tabs, body, footer] = Layout::vertical([
        Constraint::Length(3),
        Constraint::Length(1),
        Constraint::Min(3),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    render_header(frame, header, app);
    let titles: Vec<String> = View::ALL
        .iter()
        .enumerate()
        .map(|(i, v)| format!("{} {}", i + 1, v.title()))
        .collect();
    let selected = View::ALL.iter().position(|v| *v == app.view).unwrap_or(0);
    frame.render_widget(
        Tabs::new(titles)
            .select(selected)
            .highlight_style(Style::new().bold().reversed()),
        tabs,
    );
    render_body(frame, body, app);
    render_footer(frame, footer, app);
    if app.detail {
        render_detail(frame, body, app);
    }
    if app.help {
        render_help(frame, body);
    }
}

/// Every key, for the help screen.
const HELP: &[(&str, &str)] = &[
    (
        "1-7, Tab, Shift-Tab",
        "views: threads, timers, descriptors, pools, blocked workers, profile, time by site",
    ),
    ("Up, Down, PgUp, PgDn, Home, End", "move the selection"),
    (
        "Enter",
        "details of the selected entry (Enter or Esc closes them)",
    ),
    ("/", "filter rows by text (Enter keeps it, Esc clears it)"),
    ("Esc", "clear the filter"),
    ("s, S", "sort the threads by the next (previous) column"),
    ("r", "reverse the sort"),
    ("t", "threads as a tree by parent"),
    ("p, Space", "pause or resume refreshing"),
    (
        "T",
        "time every switch (the DELAY column; costs the process a clock read per switch)",
    ),
    ("+, -", "refresh faster or slower"),
    (
        "K",
        "kill the selected green thread (asks first; the process logs who asked)",
    ),
    ("?, h", "this help (any key closes it)"),
    ("q, Ctrl-C", "quit"),
];

fn render_help(frame: &mut Frame<'_>, body: Rect) {
    let width = body.width.min(76);
    let area = Rect {
        x: body.x + (body.width - width) / 2,
        y: body.y,
        width,
        height: body.height.min(HELP.len() as u16 + 2),
    };
    let keys = HELP.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let lines: Vec<Line<'_>> = HELP
        .iter()
        .map(|(k, what)| {
            Line::from(vec![
                Span::from(format!("{k:keys$}  ")).bold(),
                Span::from(*what),
            ])
        })
        .collect();
    frame.render_widget(Clear, area);
    frame.render_widget(
        Paragraph::new(lines).block(Block::default().borders(Borders::ALL).title("keys")),
        area,
    );
}

/// Draws the whole screen off-screen, `width` by `height`, and returns its text, a line per
/// row: what `inspector attach` shows on a terminal of that size (for tests and captures).
///
/// ```
/// use greenhub_inspector::tui::{render_text, App};
///
/// let text = render_text(&App::new(42), 80, 12);
/// assert!(text.lines().next().unwrap().contains("pid 42: waiting for the first snapshot"));
/// ```
pub fn render_text(app: &App, width: u16, height: u16) -> String {
    draw_text(width, height, |f| render(f, app))
}

/// What `draw` puts on a terminal of `width` by `height`, as text, one line per row.
pub(crate) fn draw_text(width: u16, height: u16, draw: impl FnOnce(&mut Frame<'_>)) -> String {
    // Drawing into memory has nothing that can fail; an empty text would show it if it did.
    let Ok(mut terminal) = Terminal::new(TestBackend::new(width, height)) else {
        return String::new();
    };
    if terminal.draw(draw).is_err() {
        return String::new();
    }
    let buffer = terminal.backend().buffer();
    (0..buffer.area.height)
        .map(|y| {
            (0..buffer.area.width)
                .map(|x| buffer[(x, y)].symbol())
                .collect::<String>()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn render_header(frame: &mut Frame<'_>, area: Rect, app: &App) {
    let mut lines = Vec::new();
    match &app.snapshot {
        Some(s) => {
            let t = &s.totals;
            let pools = app.pool_totals();
            lines.push(Line::from(vec![
                Span::from(format!("{} ", s.process)).bold(),
                Span::from(format!(
                    "pid {}  up {}  {} workers  refresh {}{}{}",
                    s.pid,
                    format_us(s.uptime_us),
                    s.runtime.workers,
                    format_us(app.refresh.as_micros() as u64),
                    if app.paused { "  [paused]" } else { "" },
                    if s.timing { "  [timing]" } else { "" }
                )),
            ]));
            lines.push(Line::from(format!(
                "threads {} live: {} running, {} waiting, {} scheduled   switches/s {}   \
                 timers {}   descriptors {}",
                t.live,
                t.running,
                t.waiting,
                t.scheduled,
                app.switches_per_sec
                    .map(|r| format!("{r:.0}"))
                    .unwrap_or_else(|| "-".into()),
                t.timers,
                t.descriptors
            )));
            let mut third = vec![Span::from(format!(
                "tpool {} busy, {} queued   db pools {}/{} in use, {} waiting   ",
                pools.tpool_busy,
                pools.tpool_queued,
                pools.db_in_use,
                pools.db_max,
                pools.db_waiting
            ))];
            let blocked = format!("blocked workers now: {}", t.blocked_now);
            third.push(if t.blocked_now > 0 {
                Span::from(blocked).bold().red()
            } else {
                Span::from(blocked)
            });
            if t.deadlocked > 0 {
                third.push(
                    Span::from(format!(
                        "   DEADLOCKED: {} threads in {} (details of a thread say which)",
                        t.deadlocked,
                        s.deadlocks.len()
                    ))
                    .bold()
                    .red(),
                );
            }
            lines.push(Line::from(third));
        }
        None => lines.push(Line::from(format!(
            "pid {}: waiting for the first snapshot",
            app.pid
        ))),
    }
    if let Some(id) = app.confirm_kill {
        let name = app
            .snapshot
            .as_ref()
            .and_then(|s| s.threads.iter().find(|t| t.id == id))
            .and_then(|t| t.name.clone())
            .map(|n| format!(" \"{n}\""))
            .unwrap_or_default();
        lines.truncate(2);
        lines.push(
            Line::from(format!(
                "kill green thread #{id}{name}? y kills it, any other key cancels"
            ))
            .bold()
            .yellow(),
        );
    } else if let Some(e) = &app.error {
        lines.truncate(2);
        lines.push(Line::from(e.clone()).bold().red());
    } else if let Some(n) = &app.notice {
        lines.truncate(2);
        lines.push(Line::from(n.clone()).bold());
    }
    frame.render_widget(Paragraph::new(lines), area);
}

/// The first row shown so that the selected one is on screen.
fn offset(selected: usize, visible: usize) -> usize {
    if visible == 0 || selected < visible {
        0
    } else {
        selected + 1 - visible
    }
}

fn render_body(frame: &mut Frame<'_>, area: Rect, app: &App) {
    // Borders and the heading row.
    let visible = area.height.saturating_sub(3) as usize;
    let window = Window {
        start: offset(app.selected, visible),
        visible,
        selected: app.selected,
        width: area.width,
    };
    let body = match app.view {
        View::Threads => threads_body(app, &window),
        View::Timers => timers_body(app, &window),
        View::Descriptors => descriptors_body(app, &window),
        View::Pools => pools_body(app, &window),
        View::Blocked => blocked_body(app, &window),
        View::Profile => profile_body(app, &window),
        View::Sites => sites_body(app, &window),
    };
    let table = Table::new(body.rows, body.widths)
        .header(Row::new(body.heading).style(Style::new().bold()))
        .block(Block::default().borders(Borders::ALL).title(body.title));
    frame.render_widget(table, area);
}

/// What a view puts in the body's table.
struct Body {
    title: String,
    heading: Vec<String>,
    widths: Vec<Constraint>,
    rows: Vec<Row<'static>>,
}

impl Body {
    fn new(title: String, heading: &[&str], widths: &[u16], rows: Vec<Row<'static>>) -> Body {
        // The last column takes what is left, at least its given width.
        let last = widths.len().saturating_sub(1);
        Body {
            title,
            heading: heading.iter().map(|h| h.to_string()).collect(),
            widths: widths
                .iter()
                .enumerate()
                .map(|(i, w)| {
                    if i == last {
                        Constraint::Min(*w)
                    } else {
                        Constraint::Length(*w)
                    }
                })
                .collect(),
            rows,
        }
    }
}

/// The entries of a view that fit on the screen, and which one is selected.
struct Window {
    start: usize,
    visible: usize,
    selected: usize,
    /// The body's width, borders included.
    width: u16,
}

impl Window {
    /// The rows of the entries in the window, each made by `row` from its index and entry.
    fn rows<T>(&self, all: &[T], row: impl Fn(usize, &T) -> Row<'static>) -> Vec<Row<'static>> {
        all.iter()
            .enumerate()
            .skip(self.start)
            .take(self.visible)
            .map(|(i, entry)| row(i, entry))
            .collect()
    }

    /// The plain style of row `i`: reversed when selected.
    fn style(&self, i: usize) -> Style {
        if i == self.selected {
            Style::new().add_modifier(Modifier::REVERSED)
        } else {
            Style::new()
        }
    }
}

/// The threads view's columns that a terminal narrower than this leaves out (deadline, run
/// time, switches), so that the name keeps its width before the spawn site.
const WIDE: u16 = 120;

fn threads_body(app: &App, w: &Window) -> Body {
    let all = app.thread_rows();
    let narrow = w.width < WIDE;
    let shown: Vec<Column> = Column::ALL
        .iter()
        .copied()
        .filter(|c| {
            !narrow
                || !matches!(
                    c,
                    Column::Deadline | Column::Run | Column::Switches | Column::Delay
                )
        })
        .collect();
    let rows = w.rows(&all, |i, r| {
        let t = r.thread;
        let state = match t.state {
            ThreadState::Running => Span::from("running").green(),
            ThreadState::Waiting => Span::from("waiting"),
            ThreadState::Scheduled => Span::from("scheduled").dim(),
        };
        let mut state = Some(state);
        let cells: Vec<Cell<'static>> = shown
            .iter()
            .map(|c| match c {
                Column::Id => Cell::from(t.id.to_string()),
                Column::Name => Cell::from(tree_name(r.depth, t.name.as_deref())),
                Column::State => Cell::from(state.take().unwrap_or_default()),
                Column::WaitingOn => Cell::from(waiting_on(t)),
                Column::For => Cell::from(format_us(t.state_for_us)),
                Column::Deadline => Cell::from(deadline(t.deadline_in_us)),
                Column::Run => Cell::from(format_us(t.run_time_us)),
                Column::Switches => Cell::from(t.switches.to_string()),
                Column::Delay => Cell::from(
                    delay_ns(t).map_or_else(|| "-".to_string(), |ns| format_us(ns / 1000)),
                ),
                Column::Site => Cell::from(t.spawn_site.clone()),
            })
            .collect();
        Row::new(cells).style(w.style(i))
    });
    let title = format!(
        "{} of {} threads{}{}",
        all.len(),
        app.snapshot.as_ref().map_or(0, |s| s.threads.len()),
        if app.tree { ", tree by parent" } else { "" },
        filter_note(app)
    );
    let widths: Vec<u16> = shown
        .iter()
        .map(|c| match c {
            Column::Id => 8,
            Column::Name => 20,
            Column::State => 9,
            Column::WaitingOn => 22,
            Column::For => 7,
            Column::Deadline => 9,
            Column::Run => 8,
            Column::Switches => 9,
            Column::Delay => 7,
            Column::Site => 10,
        })
        .collect();
    let mut body = Body::new(title, &[], &widths, rows);
    body.heading = shown
        .iter()
        .map(|c| {
            if *c == app.sort {
                format!("{}{}", c.title(), if app.reverse { "▲" } else { "▼" })
            } else {
                c.title().to_string()
            }
        })
        .collect();
    body
}

fn timers_body(app: &App, w: &Window) -> Body {
    let all = app.timer_rows();
    let rows = w.rows(&all, |i, t| {
        Row::new(vec![
            Cell::from(t.id.to_string()),
            Cell::from(deadline(Some(t.due_in_us))),
            Cell::from(timer_kind(t.kind)),
            Cell::from(t.owner.map(|o| format!("#{o}")).unwrap_or_default()),
            Cell::from(t.site.clone()),
        ])
        .style(w.style(i))
    });
    Body::new(
        format!("{} timers, soonest first{}", all.len(), filter_note(app)),
        &["ID", "DUE", "KIND", "OWNER", "CREATED AT"],
        &[10, 14, 12, 10, 20],
        rows,
    )
}

fn descriptors_body(app: &App, w: &Window) -> Body {
    let all = app.descriptor_rows();
    let rows = w.rows(&all, |i, d| {
        let owner = d.owner.and_then(|o| app.thread(o));
        Row::new(vec![
            Cell::from(d.fd.to_string()),
            Cell::from(d.interest.name()),
            Cell::from(d.owner.map(|o| format!("#{o}")).unwrap_or_default()),
            Cell::from(owner.and_then(|t| t.name.clone()).unwrap_or_default()),
            Cell::from(format_us(d.waiting_us)),
        ])
        .style(w.style(i))
    });
    Body::new(
        format!(
            "{} descriptors, longest wait first{}",
            all.len(),
            filter_note(app)
        ),
        &["FD", "INTEREST", "OWNER", "OWNER NAME", "WAITING FOR"],
        &[8, 12, 10, 24, 12],
        rows,
    )
}

fn pools_body(app: &App, w: &Window) -> Body {
    let all = app.object_rows();
    let rows = w.rows(&all, |i, o| {
        let counts: Vec<String> = o
            .counts
            .iter()
            .chain(&o.totals)
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        let leaks = o.totals.get("leaks").copied().unwrap_or(0);
        let row = Row::new(vec![
            Cell::from(o.id.to_string()),
            Cell::from(o.kind.name()),
            Cell::from(o.name.clone().unwrap_or_default()),
            Cell::from(o.waiters.to_string()),
            Cell::from(counts.join(", ")),
        ]);
        if leaks > 0 && i != w.selected {
            row.style(Style::new().yellow())
        } else {
            row.style(w.style(i))
        }
    });
    Body::new(
        format!(
            "{} objects, pools first (Enter: checkouts, waiters, histograms){}",
            all.len(),
            filter_note(app)
        ),
        &["ID", "KIND", "NAME", "WAITING", "COUNTS"],
        &[10, 12, 20, 8, 20],
        rows,
    )
}

fn blocked_body(app: &App, w: &Window) -> Body {
    let all = app.blocked_rows();
    let rows = w.rows(&all, |i, b| {
        let row = Row::new(vec![
            Cell::from(format!("#{}", b.thread)),
            Cell::from(b.name.clone().unwrap_or_default()),
            Cell::from(format!("{} (tid {})", b.worker, b.tid)),
            Cell::from(format_us(b.duration_us)),
            Cell::from(b.cause.map_or("", |c| c.name())),
            Cell::from(if b.ongoing {
                "now".to_string()
            } else {
                format!("{} ago", format_us(b.started_ago_us))
            }),
            Cell::from(b.spawn_site.clone().unwrap_or_default()),
        ]);
        if b.ongoing && i != w.selected {
            row.style(Style::new().red().bold())
        } else {
            row.style(w.style(i))
        }
    });
    Body::new(
        format!(
            "{} reports of green threads that kept a worker busy{}",
            all.len(),
            filter_note(app)
        ),
        &[
            "THREAD",
            "NAME",
            "WORKER",
            "BUSY FOR",
            "WHY",
            "WHEN",
            "SPAWNED AT",
        ],
        &[10, 18, 14, 10, 14, 12, 20],
        rows,
    )
}

fn sites_body(app: &App, w: &Window) -> Body {
    let all = app.site_rows();
    let timing = app.snapshot.as_ref().is_some_and(|s| s.timing);
    let title = if timing {
        format!(
            "{} spawn sites, the most time first (Enter: every kind of time){}",
            all.len(),
            filter_note(app)
        )
    } else {
        "timing is off: T times every switch (it costs the process a clock read per switch)"
            .to_string()
    };
    let ns = |v: u64| format_us(v / 1000);
    let rows = w.rows(&all, |i, s| {
        let of = |kind: &str| s.spent.iter().find(|k| k.kind == kind);
        let running = of("running");
        let runnable = of("runnable");
        let wait = s
            .spent
            .iter()
            .find(|k| k.kind != "running" && k.kind != "runnable");
        Row::new(vec![
            Cell::from(running.map_or("-".into(), |k| ns(k.total_ns))),
            Cell::from(running.map_or("-".into(), |k| ns(k.p99_ns))),
            Cell::from(runnable.map_or("-".into(), |k| ns(k.p50_ns))),
            Cell::from(runnable.map_or("-".into(), |k| ns(k.p99_ns))),
            Cell::from(wait.map_or("-".into(), |k| format!("{} {}", k.kind, ns(k.total_ns)))),
            Cell::from(s.spawn_site.clone()),
        ])
        .style(w.style(i))
    });
    Body::new(
        title,
        &[
            "RUNNING",
            "RUN P99",
            "DELAY P50",
            "DELAY P99",
            "MOST WAITED ON",
            "SPAWNED AT",
        ],
        &[9, 9, 10, 10, 24, 30],
        rows,
    )
}

fn profile_body(app: &App, w: &Window) -> Body {
    let all = app.profile_rows();
    let title = match app.profile() {
        None => "profile: taking one (a second of samples)...".to_string(),
        Some(Err(why)) => format!("no profile: {why}"),
        Some(Ok(p)) => {
            let on = p
                .on_cpu
                .iter()
                .fold(0u64, |sum, e| sum.saturating_add(e.weight));
            format!(
                "the last {}: {} samples of {} workers ({} in green threads); the parked \
                 threads' waits below{}",
                format_us(p.duration_us),
                p.samples,
                p.workers,
                on,
                filter_note(app)
            )
        }
    };
    let (on_total, off_total) = match app.profile() {
        Some(Ok(p)) => {
            let sum = |es: &[greenhub_snapshot::ProfileEntry]| {
                es.iter()
                    .fold(0u64, |sum, e| sum.saturating_add(e.weight))
                    .max(1)
            };
            (sum(&p.on_cpu), sum(&p.off_cpu))
        }
        _ => (1, 1),
    };
    let rows = w.rows(&all, |i, r| {
        let total = if r.on_cpu { on_total } else { off_total };
        let pct = |v: u64| format!("{:.1}%", v as f64 * 100.0 / total as f64);
        Row::new(vec![
            Cell::from(if r.on_cpu { "cpu" } else { "wait" }),
            Cell::from(pct(r.own)),
            Cell::from(pct(r.total)),
            Cell::from(r.function.clone()),
        ])
        .style(w.style(i))
    });
    Body::new(
        title,
        &["", "OWN", "TOTAL", "FUNCTION"],
        &[5, 7, 7, 30],
        rows,
    )
}

/// A name indented under its parent in tree mode (depth 0 outside it).
fn tree_name(depth: usize, name: Option<&str>) -> String {
    let name = name.unwrap_or("-");
    match depth {
        0 => name.to_owned(),
        d => format!("{}└ {name}", "  ".repeat(d - 1)),
    }
}

fn filter_note(app: &App) -> String {
    if app.filter.is_empty() {
        String::new()
    } else {
        format!(", filter \"{}\"", app.filter)
    }
}

fn deadline(d: Option<i64>) -> String {
    match d {
        Some(d) if d >= 0 => format_us(d as u64),
        Some(d) => format!("-{}", format_us(d.unsigned_abs())),
        None => String::new(),
    }
}

fn render_footer(frame: &mut Frame<'_>, area: Rect, app: &App) {
    let line = if app.editing_filter {
        Line::from(vec![
            Span::from("filter: ").bold(),
            Span::from(app.filter.clone()),
            Span::from("▏  (Enter keeps it, Esc clears it)"),
        ])
    } else {
        Line::from(
            "? help  q quit  1-7/Tab views  ↑↓ move  Enter details  / filter  s/S sort  \
             r reverse  t tree  p pause  +/- refresh  K kill",
        )
        .dim()
    };
    frame.render_widget(Paragraph::new(line), area);
}

fn render_detail(frame: &mut Frame<'_>, body: Rect, app: &App) {
    let area = Rect {
        x: body.x + body.width / 10,
        y: body.y + 1,
        width: body.width - body.width / 5,
        height: body.height.saturating_sub(2),
    };
    let lines: Vec<Line<'_>> = app.detail_lines().into_iter().map(Line::from).collect();
    frame.render_widget(Clear, area);
    frame.render_widget(
        Paragraph::new(lines).block(
            Block::default()
                .borders(Borders::ALL)
                .title("details (Enter or Esc closes)"),
        ),
        area,
    );
}
