//! Summaries: percentiles of one run's samples, and the median and spread
//! (min–max) of a figure over repetitions.

use serde_json::{Value, json};

/// Nearest-rank percentile `p` (0..=100) of sorted `values`; 0 when empty.
#[allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "a rank: the ceiling of a fraction of the length, at most the length"
)]
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// p50, p99 and max of `samples` (any order).
#[derive(Debug, Clone, Copy, Default)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest sample.
    pub max: f64,
    /// How many samples.
    pub count: usize,
}

impl Percentiles {
    /// Computes them (sorts a copy).
    pub fn of(samples: &[f64]) -> Self {
        let mut s = samples.to_vec();
        s.sort_by(f64::total_cmp);
        Self {
            p50: percentile(&s, 50.0),
            p99: percentile(&s, 99.0),
            max: s.last().copied().unwrap_or(0.0),
            count: s.len(),
        }
    }
}

/// One reported figure: its value in each repetition.
#[derive(Debug, Clone)]
pub struct Figure {
    /// Stable identifier used in the JSON and to find it for the chart.
    pub id: String,
    /// Human label for the table.
    pub label: String,
    /// Unit, e.g. `events/s`, `ms`, `MB`.
    pub unit: &'static str,
    /// One value per repetition.
    pub values: Vec<f64>,
    /// The goal, if this figure has one.
    pub goal: Option<Goal>,
}

/// A goal a figure is held against.
#[derive(Debug, Clone, Copy)]
pub enum Goal {
    /// The median must be at least this.
    AtLeast(f64),
    /// The median must be below this.
    Below(f64),
}

impl Goal {
    /// Whether `v` meets it.
    pub fn met_by(self, v: f64) -> bool {
        match self {
            Goal::AtLeast(g) => v >= g,
            Goal::Below(g) => v < g,
        }
    }

    /// E.g. `>= 0.60`, `< 10 ms`.
    pub fn describe(self, unit: &str) -> String {
        let (op, g) = match self {
            Goal::AtLeast(g) => ("≥", g),
            Goal::Below(g) => ("<", g),
        };
        if unit.is_empty() {
            format!("{op} {}", fmt_num(g))
        } else {
            format!("{op} {} {unit}", fmt_num(g))
        }
    }
}

impl Figure {
    /// A figure without a goal.
    pub fn new(id: impl Into<String>, label: impl Into<String>, unit: &'static str) -> Self {
        Self {
            id: id.into(),
            label: label.into(),
            unit,
            values: Vec::new(),
            goal: None,
        }
    }

    /// Median over repetitions (the mean of the middle two for an even count).
    pub fn median(&self) -> f64 {
        let mut v = self.values.clone();
        v.sort_by(f64::total_cmp);
        match v.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => v[n / 2],
            n => f64::midpoint(v[n / 2 - 1], v[n / 2]),
        }
    }

    /// Smallest value.
    pub fn min(&self) -> f64 {
        self.values.iter().copied().fold(f64::INFINITY, f64::min)
    }

    /// Largest value.
    pub fn max(&self) -> f64 {
        self.values
            .iter()
            .copied()
            .fold(f64::NEG_INFINITY, f64::max)
    }

    /// Whether the median meets the goal (`None` without goal or values).
    pub fn met(&self) -> Option<bool> {
        let goal = self.goal?;
        (!self.values.is_empty()).then(|| goal.met_by(self.median()))
    }

    /// The JSON form.
    pub fn to_json(&self) -> Value {
        let finite = |v: f64| {
            if v.is_finite() {
                json!(round(v))
            } else {
                Value::Null
            }
        };
        json!({
            "id": self.id,
            "label": self.label,
            "unit": self.unit,
            "values": self.values.iter().map(|v| round(*v)).collect::<Vec<_>>(),
            "median": finite(self.median()),
            "min": finite(self.min()),
            "max": finite(self.max()),
            "goal": self.goal.map(|g| g.describe(self.unit)),
            "met": self.met(),
        })
    }
}

/// Rounds to 4 significant-ish decimals for the JSON.
pub fn round(v: f64) -> f64 {
    if v.abs() >= 100.0 {
        (v * 10.0).round() / 10.0
    } else {
        (v * 10_000.0).round() / 10_000.0
    }
}

/// A number for the table: thousands separated, 0–2 decimals by size.
#[allow(
    clippy::cast_possible_truncation,
    reason = "figures in a report, far below 2^63"
)]
pub fn fmt_num(v: f64) -> String {
    if !v.is_finite() {
        return "–".into();
    }
    if v == 0.0 {
        return "0".into();
    }
    if v.abs() >= 1000.0 {
        let n = v.round() as i64;
        let s = n.abs().to_string();
        let mut out = String::new();
        for (i, c) in s.chars().enumerate() {
            if i > 0 && (s.len() - i).is_multiple_of(3) {
                out.push(',');
            }
            out.push(c);
        }
        if n < 0 { format!("-{out}") } else { out }
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(
        clippy::float_cmp,
        reason = "the nearest rank is one of the samples, so the comparison is exact"
    )]
    fn nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
        let p = Percentiles::of(&[3.0, 1.0, 2.0]);
        assert_eq!((p.p50, p.max, p.count), (2.0, 3.0, 3));
    }

    #[test]
    fn median_spread_and_goals() {
        let mut f = Figure::new("x", "x", "ms");
        f.goal = Some(Goal::Below(10.0));
        f.values = vec![12.0, 4.0, 5.0];
        assert_eq!((f.median(), f.min(), f.max()), (5.0, 4.0, 12.0));
        assert_eq!(f.met(), Some(true));
        assert_eq!(fmt_num(1_234_567.0), "1,234,567");
        assert_eq!(fmt_num(0.613), "0.61");
    }
}
