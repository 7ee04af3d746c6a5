//! The outputs: `latest.json` (everything), `README.md` (the table) and
//! `chart.svg` (hand-written SVG: each throughput beside its raw limit, the
//! latency percentiles, memory, and the rebuild-time curve).

use std::{fmt::Write as _, path::Path};

use serde_json::{Value, json};

use crate::{
    part::PartState,
    stats::{Figure, Goal, fmt_num},
};

/// One part's outcome, named.
pub struct PartReport {
    /// e.g. `ingest`.
    pub name: &'static str,
    /// What it does, for the table.
    pub title: &'static str,
    /// Whether it ran at all (skipped parts are not failures).
    pub ran: bool,
    /// Its record.
    pub state: PartState,
}

impl PartReport {
    /// Ran without errors.
    pub fn ok(&self) -> bool {
        !self.ran || self.state.errors.is_empty()
    }
}

/// The whole run.
pub struct Report {
    /// `quick` or `full`.
    pub mode: &'static str,
    /// RFC 3339 start time.
    pub taken_at: String,
    /// Wall time of the whole run.
    pub duration_s: f64,
    /// From [`crate::system::machine`].
    pub machine: Value,
    /// nats-server version string.
    pub nats_version: String,
    /// The sizes used.
    pub sizes: Value,
    /// `--note`: how and when the figures were taken.
    pub note: Option<String>,
    /// Load average when the last part ended.
    pub load_at_end: String,
    /// The parts, in order.
    pub parts: Vec<PartReport>,
}

impl Report {
    /// Rebuilds a report from its `latest.json` (for `--render`: redraw the
    /// table and chart of a finished run without running it again).
    pub fn from_json(v: &Value) -> Option<Self> {
        let text = |v: &Value| v.as_str().map(str::to_string);
        let unit = |u: &str| -> &'static str {
            ["events/s", "reviews/s", "requests/s", "ms", "MB", "s", ""]
                .into_iter()
                .find(|k| *k == u)
                .unwrap_or("")
        };
        let goal = |g: &str| -> Option<Goal> {
            let (op, rest) = g.split_once(' ')?;
            let number: f64 = rest
                .split_whitespace()
                .next()?
                .replace(',', "")
                .parse()
                .ok()?;
            match op {
                "≥" => Some(Goal::AtLeast(number)),
                "<" => Some(Goal::Below(number)),
                _ => None,
            }
        };
        let mut parts = Vec::new();
        for (name, title) in crate::PARTS {
            let p = &v["parts"][name];
            let figures = p["figures"]
                .as_array()
                .map(|fs| {
                    fs.iter()
                        .map(|f| Figure {
                            id: text(&f["id"]).unwrap_or_default(),
                            label: text(&f["label"]).unwrap_or_default(),
                            unit: unit(f["unit"].as_str().unwrap_or("")),
                            values: f["values"]
                                .as_array()
                                .map(|a| a.iter().filter_map(Value::as_f64).collect())
                                .unwrap_or_default(),
                            goal: f["goal"].as_str().and_then(goal),
                        })
                        .collect()
                })
                .unwrap_or_default();
            parts.push(PartReport {
                name,
                title,
                ran: p["ran"].as_bool().unwrap_or(false),
                state: PartState {
                    figures,
                    details: p["details"].as_object().cloned().unwrap_or_default(),
                    errors: p["errors"]
                        .as_array()
                        .map(|a| a.iter().filter_map(text).collect())
                        .unwrap_or_default(),
                },
            });
        }
        Some(Self {
            mode: if v["mode"].as_str()? == "quick" {
                "quick"
            } else {
                "full"
            },
            taken_at: text(&v["taken_at"])?,
            duration_s: v["duration_s"].as_f64().unwrap_or(0.0),
            machine: v["machine"].clone(),
            nats_version: text(&v["nats_server"]["version"]).unwrap_or_default(),
            sizes: v["sizes"].clone(),
            note: text(&v["note"]),
            load_at_end: text(&v["load_average_at_end"]).unwrap_or_default(),
            parts,
        })
    }

    fn figures(&self) -> impl Iterator<Item = &Figure> {
        self.parts.iter().flat_map(|p| p.state.figures.iter())
    }

    fn figure(&self, id: &str) -> Option<&Figure> {
        self.figures().find(|f| f.id == id && !f.values.is_empty())
    }

    /// The JSON document.
    pub fn to_json(&self) -> Value {
        let parts: serde_json::Map<String, Value> = self
            .parts
            .iter()
            .map(|p| {
                (
                    p.name.to_string(),
                    json!({
                        "title": p.title,
                        "ran": p.ran,
                        "ok": p.ok(),
                        "errors": p.state.errors,
                        "figures": p.state.figures.iter().map(Figure::to_json).collect::<Vec<_>>(),
                        "details": p.state.details,
                    }),
                )
            })
            .collect();
        let goals: Vec<Value> = self
            .figures()
            .filter(|f| f.goal.is_some())
            .map(|f| json!({"id": f.id, "label": f.label, "goal": f.goal.map(|g| g.describe(f.unit)), "median": crate::stats::round(f.median()), "met": f.met()}))
            .collect();
        json!({
            "tool": "upr-bench",
            "mode": self.mode,
            "taken_at": self.taken_at,
            "duration_s": crate::stats::round(self.duration_s),
            "machine": self.machine,
            "nats_server": {"version": self.nats_version, "flags": crate::system::NATS_FLAGS},
            "sizes": self.sizes,
            "note": self.note,
            "load_average_at_end": self.load_at_end,
            "ok": self.parts.iter().all(PartReport::ok),
            "goals": goals,
            "parts": parts,
        })
    }

    /// The Markdown table of every figure.
    pub fn table(&self) -> String {
        let mut out = String::new();
        out.push_str("| Part | Figure | Median | Spread (min–max) | Runs | Goal | Met |\n");
        out.push_str("|---|---|---:|---:|---:|---|:---:|\n");
        for p in &self.parts {
            if !p.ran {
                let _ = writeln!(out, "| {} | *skipped* | | | | | |", p.title);
                continue;
            }
            for f in &p.state.figures {
                let unit = if f.unit.is_empty() {
                    String::new()
                } else {
                    format!(" {}", f.unit)
                };
                let met = match f.met() {
                    Some(true) => "yes",
                    Some(false) => "**no**",
                    None => "",
                };
                let _ = writeln!(
                    out,
                    "| {} | {} | {}{unit} | {}–{} | {} | {} | {met} |",
                    p.title,
                    f.label,
                    fmt_num(f.median()),
                    fmt_num(f.min()),
                    fmt_num(f.max()),
                    f.values.len(),
                    f.goal.map(|g| g.describe(f.unit)).unwrap_or_default(),
                );
            }
            for e in &p.state.errors {
                let mut text: String = e.replace('|', "\\|").replace('\n', " ");
                if text.chars().count() > 240 {
                    text =
                        text.chars().take(240).collect::<String>() + "… (full text in latest.json)";
                }
                let _ = writeln!(out, "| {} | **FAILED**: {text} | | | | | |", p.title);
            }
        }
        out
    }

    /// The Markdown page: context, table, chart.
    pub fn markdown(&self) -> String {
        let m = &self.machine;
        let mut out = String::new();
        let _ = writeln!(out, "# UPR Tracker benchmark figures\n");
        let _ = writeln!(
            out,
            "Taken {} by `upr-bench{}` in {:.0} s on {} cores ({}), {} MB RAM, Linux {}; load average at start {}. \
             nats-server {} started by the benchmark with `{}`. Each figure is the median of its runs, with the spread (min–max) beside it.\n",
            self.taken_at,
            if self.mode == "quick" { " --quick" } else { "" },
            self.duration_s,
            m["cores"],
            m["cpu"].as_str().unwrap_or("unknown CPU"),
            m["memory_mb"],
            m["kernel"].as_str().unwrap_or("?"),
            m["load_average_at_start"].as_str().unwrap_or("?"),
            self.nats_version,
            crate::system::NATS_FLAGS,
        );
        let _ = writeln!(out, "Load average at the end: {}.\n", self.load_at_end);
        if let Some(note) = &self.note {
            let _ = writeln!(out, "{note}\n");
        }
        out.push_str("![throughput against the raw limits, latency percentiles, memory, rebuild time](chart.svg)\n\n");
        out.push_str(&self.table());
        let notes: Vec<String> = self
            .parts
            .iter()
            .flat_map(|p| {
                p.state
                    .details
                    .get("notes")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default()
            })
            .filter_map(|v| v.as_str().map(String::from))
            .collect();
        if self.mode == "full" {
            out.push_str("\nWhat limits each figure, with profiles, and what would change it: [analysis.md](analysis.md).\n");
        }
        if !notes.is_empty() {
            out.push_str("\nNotes from the run:\n\n");
            for n in notes {
                let _ = writeln!(out, "- {n}");
            }
        }
        out
    }

    /// Writes `latest.json`, `README.md` and `chart.svg` into `dir`.
    ///
    /// # Errors
    /// When a file cannot be written.
    pub fn write(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let json = serde_json::to_string_pretty(&self.to_json()).unwrap_or_default();
        std::fs::write(dir.join("latest.json"), json + "\n")?;
        std::fs::write(dir.join("README.md"), self.markdown())?;
        std::fs::write(dir.join("chart.svg"), self.svg())?;
        Ok(())
    }

    /// The chart.
    #[expect(
        clippy::too_many_lines,
        reason = "one chart drawn top to bottom; split, its coordinates would travel between functions"
    )]
    pub fn svg(&self) -> String {
        let mut panels: Vec<Panel> = Vec::new();
        // Throughput: each service bar beside its raw limit.
        let mut bars = Vec::new();
        let mut pair = |label: &str, service: &str, raw: &str| {
            if let (Some(s), Some(r)) = (self.figure(service), self.figure(raw)) {
                bars.push(
                    Bar::new(label, s.median(), SERVICE)
                        .spread(s)
                        .against(r.median(), 0.6),
                );
                bars.push(Bar::new("raw", r.median(), RAW).spread(r));
            }
        };
        if self.figure("scaling.ingest.1").is_some() {
            for n in [1, 2, 4] {
                pair(
                    &format!("ingest ×{n}"),
                    &format!("scaling.ingest.{n}"),
                    &format!("scaling.raw.{n}"),
                );
            }
        } else {
            pair("ingest", "ingest.service", "ingest.raw");
        }
        if !bars.is_empty() {
            panels.push(Panel::new(
                "Ingest throughput beside the raw publisher",
                "events/s",
                bars,
                None,
            ));
        }
        let mut bars = Vec::new();
        if let (Some(s), Some(r)) = (
            self.figure("projection.rebuild"),
            self.figure("projection.raw"),
        ) {
            bars.push(
                Bar::new("rebuild", s.median(), SERVICE)
                    .spread(s)
                    .against(r.median(), 0.5),
            );
            bars.push(Bar::new("raw", r.median(), RAW).spread(r));
            if let Some(d) = self.figure("projection.decode") {
                bars.push(Bar::new("raw+decode", d.median(), RAW2).spread(d));
            }
            panels.push(Panel::new(
                "Projection rebuild beside the raw consumer",
                "events/s",
                bars,
                None,
            ));
        }
        let lat = |prefix: &str| -> Vec<Bar> {
            ["p50", "p99", "max"]
                .iter()
                .filter_map(|p| {
                    self.figure(&format!("{prefix}{p}"))
                        .map(|f| Bar::new(p, f.median(), LATENCY).spread(f))
                })
                .collect()
        };
        let bars = lat("latency.");
        if !bars.is_empty() {
            panels.push(Panel::new(
                "End-to-end latency at 1,000 events/s",
                "ms",
                bars,
                Some(10.0),
            ));
        }
        let bars = lat("reminders.recv_");
        if !bars.is_empty() {
            panels.push(Panel::new(
                "Reminder lateness after due_at",
                "ms",
                bars,
                Some(100.0),
            ));
        }
        let pick = |bars: &[(&str, &str)]| -> Vec<Bar> {
            bars.iter()
                .filter_map(|(l, id)| {
                    self.figure(id)
                        .map(|f| Bar::new(l, f.median(), LATENCY).spread(f))
                })
                .collect()
        };
        let bars = pick(&[
            ("review p50", "gateway.review_p50"),
            ("review p99", "gateway.review_p99"),
            ("calendar p50", "gateway.calendar_p50"),
            ("calendar p99", "gateway.calendar_p99"),
        ]);
        if !bars.is_empty() {
            panels.push(Panel::new(
                "Gateway reads at 1,000 requests/s",
                "ms",
                bars,
                Some(5.0),
            ));
        }
        let bars = pick(&[
            ("SSE p50", "live.sse_p50"),
            ("SSE p99", "live.sse_p99"),
            ("webhook p50", "live.webhook_p50"),
            ("webhook p99", "live.webhook_p99"),
        ]);
        if !bars.is_empty() {
            panels.push(Panel::new(
                "Live notifications after storing",
                "ms",
                bars,
                Some(50.0),
            ));
        }
        let bars = lat("planner.lag_");
        if !bars.is_empty() {
            panels.push(Panel::new(
                "Planner lag behind ingest (one node)",
                "ms",
                bars,
                Some(1000.0),
            ));
        }
        let bars: Vec<Bar> = [
            ("ingest", "memory.ingest"),
            ("projection", "memory.projection"),
            ("projection (live)", "memory.projection_live"),
            ("notifier", "memory.notifier"),
            ("gateway (SSE)", "memory.gateway"),
        ]
        .iter()
        .filter_map(|(l, id)| {
            self.figure(id)
                .map(|f| Bar::new(l, f.median(), MEMORY).spread(f))
        })
        .collect();
        if !bars.is_empty() {
            panels.push(Panel::new("Peak resident memory", "MB", bars, Some(100.0)));
        }
        let mut points: Vec<(f64, f64)> = self
            .figures()
            .filter_map(|f| {
                f.id.strip_prefix("scaling.rebuild_s.")
                    .and_then(|n| n.parse().ok())
                    .map(|n: f64| (n, f.median()))
            })
            .collect();
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
        let curve = (points.len() > 1).then_some(points);

        let cols = 2;
        let (pw, ph) = (440.0, 260.0);
        let rows = (panels.len() + usize::from(curve.is_some()))
            .div_ceil(cols)
            .max(1);
        let (w, h) = (pw * cols as f64 + 20.0, ph * rows as f64 + 50.0);
        let mut svg = String::new();
        let _ = writeln!(
            svg,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="11">"#
        );
        let _ = writeln!(
            svg,
            r##"<rect width="100%" height="100%" fill="#ffffff"/>"##
        );
        let _ = writeln!(
            svg,
            r#"<text x="10" y="22" font-size="15" font-weight="bold">UPR Tracker benchmark ({}, {})</text>"#,
            self.mode,
            esc(&self.taken_at)
        );
        let _ = writeln!(
            svg,
            r##"<text x="10" y="38" fill="#555">median of runs; whiskers: min–max; red dashes: goal. Blue: service, grey: raw JetStream limit beside it.</text>"##
        );
        for (i, p) in panels.iter().enumerate() {
            let (x, y) = (10.0 + (i % cols) as f64 * pw, 50.0 + (i / cols) as f64 * ph);
            p.draw(&mut svg, x, y, pw - 20.0, ph - 20.0);
        }
        if let Some(points) = curve {
            let i = panels.len();
            let (x, y) = (10.0 + (i % cols) as f64 * pw, 50.0 + (i / cols) as f64 * ph);
            draw_curve(&mut svg, &points, x, y, pw - 20.0, ph - 20.0);
        }
        svg.push_str("</svg>\n");
        svg
    }
}

const SERVICE: &str = "#3b6fb6";
const RAW: &str = "#9a9a9a";
const RAW2: &str = "#c8c8c8";
const LATENCY: &str = "#d08a2c";
const MEMORY: &str = "#5a9a5a";

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

struct Bar {
    label: String,
    value: f64,
    color: &'static str,
    min: f64,
    max: f64,
    /// Extra text under the value, e.g. the share of the raw limit.
    note: Option<String>,
    /// A goal drawn across this bar only (e.g. 60% of its raw limit).
    mark: Option<f64>,
}

impl Bar {
    fn new(label: &str, value: f64, color: &'static str) -> Self {
        Self {
            label: label.into(),
            value,
            color,
            min: value,
            max: value,
            note: None,
            mark: None,
        }
    }

    fn against(mut self, raw: f64, goal: f64) -> Self {
        self.note = Some(format!("{:.0}% of raw", self.value / raw * 100.0));
        self.mark = Some(raw * goal);
        self
    }

    fn spread(mut self, f: &Figure) -> Self {
        self.min = f.min();
        self.max = f.max();
        self
    }
}

struct Panel {
    title: String,
    unit: &'static str,
    bars: Vec<Bar>,
    goal: Option<f64>,
}

impl Panel {
    fn new(title: &str, unit: &'static str, bars: Vec<Bar>, goal: Option<f64>) -> Self {
        Self {
            title: title.into(),
            unit,
            bars,
            goal,
        }
    }

    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "a tick count: the ceiling of a small positive ratio"
    )]
    #[expect(
        clippy::too_many_lines,
        reason = "one panel drawn top to bottom; split, its coordinates would travel between functions"
    )]
    fn draw(&self, svg: &mut String, x: f64, y: f64, w: f64, h: f64) {
        let _ = writeln!(svg, r#"<g transform="translate({x},{y})">"#);
        let _ = writeln!(
            svg,
            r#"<text x="0" y="12" font-size="12" font-weight="bold">{}</text>"#,
            esc(&self.title)
        );
        let (left, top, bottom) = (64.0, 26.0, h - 28.0);
        let plot_h = bottom - top;
        let highest = self
            .bars
            .iter()
            .map(|b| b.max.max(b.value))
            .chain(self.goal)
            .fold(0.0_f64, f64::max)
            .max(1e-9)
            * 1.2;
        let step = nice_step(highest / 4.0);
        let ticks = (highest / step).ceil().max(1.0) as u32;
        let top_value = step * f64::from(ticks);
        let yof = |v: f64| bottom - (v / top_value) * plot_h;
        for k in 0..=ticks {
            let v = step * f64::from(k);
            let gy = yof(v);
            let _ = writeln!(
                svg,
                r##"<line x1="{left}" y1="{gy:.1}" x2="{w}" y2="{gy:.1}" stroke="#e4e4e4"/><text x="{:.1}" y="{:.1}" text-anchor="end" fill="#666">{}</text>"##,
                left - 4.0,
                gy + 4.0,
                fmt_num(v)
            );
        }
        let _ = writeln!(
            svg,
            r##"<text x="0" y="{:.1}" fill="#666" transform="rotate(-90 10 {:.1})">{}</text>"##,
            top + plot_h / 2.0,
            top + plot_h / 2.0,
            self.unit
        );
        let n = self.bars.len().max(1) as f64;
        let slot = (w - left) / n;
        let bw = (slot * 0.6).min(60.0);
        for (i, b) in self.bars.iter().enumerate() {
            let cx = left + slot * (i as f64 + 0.5);
            let by = yof(b.value);
            let _ = writeln!(
                svg,
                r#"<rect x="{:.1}" y="{by:.1}" width="{bw:.1}" height="{:.1}" fill="{}"/>"#,
                cx - bw / 2.0,
                (bottom - by).max(0.0),
                b.color
            );
            if b.max > b.min {
                let _ = writeln!(
                    svg,
                    r##"<line x1="{cx:.1}" y1="{:.1}" x2="{cx:.1}" y2="{:.1}" stroke="#222"/><line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#222"/><line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#222"/>"##,
                    yof(b.min),
                    yof(b.max),
                    cx - 5.0,
                    yof(b.min),
                    cx + 5.0,
                    yof(b.min),
                    cx - 5.0,
                    yof(b.max),
                    cx + 5.0,
                    yof(b.max)
                );
            }
            let label_y = yof(b.max.max(b.value)) - 4.0;
            let _ = writeln!(
                svg,
                r##"<text x="{cx:.1}" y="{label_y:.1}" text-anchor="middle">{}</text><text x="{cx:.1}" y="{:.1}" text-anchor="middle" fill="#333">{}</text>"##,
                fmt_num(b.value),
                bottom + 14.0,
                esc(&b.label)
            );
            if let Some(note) = &b.note {
                let _ = writeln!(
                    svg,
                    r##"<text x="{cx:.1}" y="{:.1}" text-anchor="middle" fill="#333" font-size="10">{}</text>"##,
                    label_y - 12.0,
                    esc(note)
                );
            }
            if let Some(m) = b.mark {
                let my = yof(m);
                let _ = writeln!(
                    svg,
                    r##"<line x1="{:.1}" y1="{my:.1}" x2="{:.1}" y2="{my:.1}" stroke="#c0392b" stroke-width="2" stroke-dasharray="4,3"/>"##,
                    cx - bw / 2.0 - 4.0,
                    cx + bw / 2.0 + 4.0
                );
            }
        }
        if let Some(g) = self.goal {
            let gy = yof(g);
            let _ = writeln!(
                svg,
                r##"<line x1="{left}" y1="{gy:.1}" x2="{w}" y2="{gy:.1}" stroke="#c0392b" stroke-dasharray="5,4"/><text x="{w}" y="{:.1}" text-anchor="end" fill="#c0392b">goal {} {}</text>"##,
                gy - 3.0,
                fmt_num(g),
                self.unit
            );
        }
        let _ = writeln!(svg, "</g>");
    }
}

/// 1, 2 or 5 times a power of ten, at least `raw`.
fn nice_step(raw: f64) -> f64 {
    let mag = 10f64.powf(raw.max(1e-9).log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag)
}

/// Rebuild time against stream length, with the straight line through the
/// origin and the longest point: points on it mean linear cost.
#[allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "a tick count: the ceiling of a small positive ratio"
)]
fn draw_curve(svg: &mut String, points: &[(f64, f64)], x: f64, y: f64, w: f64, h: f64) {
    let _ = writeln!(svg, r#"<g transform="translate({x},{y})">"#);
    let _ = writeln!(
        svg,
        r#"<text x="0" y="12" font-size="12" font-weight="bold">Rebuild time against stream length</text>"#
    );
    let (left, top, bottom, right) = (64.0, 26.0, h - 28.0, w - 10.0);
    let xmax = points.iter().map(|p| p.0).fold(0.0, f64::max) * 1.05;
    let highest = points.iter().map(|p| p.1).fold(0.0, f64::max).max(1e-9) * 1.2;
    let step = nice_step(highest / 4.0);
    let ticks = (highest / step).ceil().max(1.0) as u32;
    let ymax = step * f64::from(ticks);
    let px = |v: f64| left + v / xmax * (right - left);
    let py = |v: f64| bottom - v / ymax * (bottom - top);
    for k in 0..=ticks {
        let v = step * f64::from(k);
        let _ = writeln!(
            svg,
            r##"<line x1="{left}" y1="{:.1}" x2="{right}" y2="{:.1}" stroke="#e4e4e4"/><text x="{:.1}" y="{:.1}" text-anchor="end" fill="#666">{}</text>"##,
            py(v),
            py(v),
            left - 4.0,
            py(v) + 4.0,
            fmt_num(v)
        );
    }
    let _ = writeln!(
        svg,
        r##"<text x="0" y="{:.1}" fill="#666" transform="rotate(-90 10 {:.1})">s</text>"##,
        f64::midpoint(top, bottom),
        f64::midpoint(top, bottom)
    );
    if let Some(&(lx, ly)) = points.last() {
        let _ = writeln!(
            svg,
            r##"<line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#999" stroke-dasharray="4,4"/>"##,
            px(0.0),
            py(0.0),
            px(lx),
            py(ly)
        );
    }
    let path: Vec<String> = points
        .iter()
        .map(|(a, b)| format!("{:.1},{:.1}", px(*a), py(*b)))
        .collect();
    let _ = writeln!(
        svg,
        r#"<polyline points="{}" fill="none" stroke="{SERVICE}" stroke-width="2"/>"#,
        path.join(" ")
    );
    for (a, b) in points {
        let _ = writeln!(
            svg,
            r##"<circle cx="{:.1}" cy="{:.1}" r="4" fill="{SERVICE}"/><text x="{:.1}" y="{:.1}" text-anchor="middle">{} s</text><text x="{:.1}" y="{:.1}" text-anchor="middle" fill="#333">{}</text>"##,
            px(*a),
            py(*b),
            px(*a),
            py(*b) - 8.0,
            fmt_num(*b),
            px(*a),
            bottom + 14.0,
            fmt_num(*a)
        );
    }
    let _ = writeln!(svg, "</g>");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_survives_its_json_so_it_can_be_redrawn() {
        let mut f = Figure::new("latency.p99", "End-to-end p99", "ms");
        f.goal = Some(Goal::Below(10.0));
        f.values = vec![8.1, 15.7, 32.0];
        let mut state = PartState::default();
        state.figures.push(f);
        let mut rate = Figure::new("gateway.kv_rate", "Direct KV gets", "requests/s");
        rate.values = vec![5000.0];
        state.figures.push(rate);
        state.errors.push("a | b".into());
        let report = Report {
            mode: "full",
            taken_at: "2025-01-23T08:30:00Z".into(),
            duration_s: 1.0,
            machine: json!({"cores": 2}),
            nats_version: "v2.15.1".into(),
            sizes: json!({}),
            note: Some("n".into()),
            load_at_end: "0.1 0.2 0.3".into(),
            parts: vec![PartReport {
                name: "latency",
                title: "3 Latency",
                ran: true,
                state,
            }],
        };
        let json = report.to_json();
        let back = Report::from_json(&json).unwrap();
        assert_eq!(back.to_json()["parts"]["latency"], json["parts"]["latency"]);
        assert!(
            back.markdown()
                .contains("Load average at the end: 0.1 0.2 0.3.")
        );
        assert!(back.table().contains(
            "| 3 Latency | End-to-end p99 | 15.7 ms | 8.10–32.0 | 3 | < 10.0 ms | **no** |"
        ));
        assert!(back.table().contains("a \\| b"));
        assert!(
            back.table()
                .contains("| Direct KV gets | 5,000 requests/s |")
        );
        assert!(back.svg().starts_with("<svg"));
    }
}
