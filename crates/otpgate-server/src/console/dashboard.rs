//! The dashboard: balances, sends, completions and conversion today and
//! over 30 days, a chart of sends against completions per day (an SVG drawn
//! here, so it needs no script), and delivery success per channel.

use askama::Template;
use axum::extract::State;
use axum::response::Response;
use otpgate_store::{ChannelStats, DailyStats};

use super::error::render;
use super::extract::AccountCtx;
use super::{Console, PageError};
use crate::time::{DAY_MS, date, day_start, short_date};

/// Days the chart and the month totals cover, today included.
const DAYS: i64 = 30;

#[derive(Template)]
#[template(path = "console/dashboard.html")]
struct DashboardPage {
    chrome: super::views::Chrome,
    credits: i64,
    test_credits: i64,
    today: Totals,
    month: Totals,
    chart: Chart,
    days: Vec<DayRow>,
    channels: Vec<ChannelRow>,
}

struct Totals {
    sends: u64,
    completed: u64,
    rate: String,
}

impl Totals {
    fn of<'a>(days: impl IntoIterator<Item = &'a DailyStats>) -> Self {
        let (sends, completed) = sums(days);
        Self {
            sends,
            completed,
            rate: percent(completed, sends),
        }
    }
}

struct DayRow {
    date: String,
    sends: u64,
    completed: u64,
    rate: String,
}

struct ChannelRow {
    name: String,
    attempted: u64,
    succeeded: u64,
    failed: u64,
    rate: String,
    /// 0..=100 for the `<meter>`.
    value: u64,
}

/// The chart's geometry, in SVG user units; the template only places it.
pub struct Chart {
    pub width: u32,
    pub height: u32,
    pub left: u32,
    pub right: u32,
    pub baseline: u32,
    pub bars: Vec<Bar>,
    pub ticks: Vec<Tick>,
    pub labels: Vec<Label>,
    pub empty: bool,
    /// A sentence summarising the chart for screen readers.
    pub summary: String,
}

pub struct Bar {
    pub x: String,
    pub y: String,
    pub w: String,
    pub h: String,
    /// `sends` or `done`, the CSS class.
    pub kind: &'static str,
    pub title: String,
}

pub struct Tick {
    pub y: String,
    pub label: u64,
}

pub struct Label {
    pub x: String,
    pub text: String,
    /// `middle`, or `end` for today's, which would overhang the plot.
    pub anchor: &'static str,
}

/// Sends and completions over `days`.
fn sums<'a>(days: impl IntoIterator<Item = &'a DailyStats>) -> (u64, u64) {
    days.into_iter()
        .fold((0, 0), |(s, c), d| (s + d.sends, c + d.completed))
}

fn percent(part: u64, whole: u64) -> String {
    if whole == 0 {
        "–".to_owned()
    } else {
        #[allow(clippy::cast_precision_loss)]
        let p = part as f64 * 100.0 / whole as f64;
        format!("{p:.1}%")
    }
}

/// The smallest of 1, 2, 5 × 10ⁿ at least `x`.
fn nice_step(x: u64) -> u64 {
    let mut magnitude = 1u64;
    loop {
        for m in [1, 2, 5] {
            let step = m * magnitude;
            if step >= x {
                return step;
            }
        }
        magnitude = magnitude.saturating_mul(10);
        if magnitude == u64::MAX {
            return u64::MAX;
        }
    }
}

fn f(x: f64) -> String {
    format!("{x:.1}")
}

/// Lays out one pair of bars per day, four gridlines and a date label a
/// week apart ending today.
#[allow(clippy::cast_precision_loss)]
pub fn chart(days: &[DailyStats]) -> Chart {
    let (width, height, left, right, top, bottom) = (640u32, 250u32, 56u32, 8u32, 14u32, 34u32);
    let plot_w = f64::from(width - left - right);
    let plot_h = f64::from(height - top - bottom);
    let baseline = height - bottom;
    let max = days.iter().map(|d| d.sends).max().unwrap_or(0);
    let step = nice_step(max.div_ceil(4).max(1));
    let ymax = step.saturating_mul(4) as f64;
    let n = days.len().max(1) as f64;
    let slot = plot_w / n;
    let bar_w = slot * 0.38;
    let mut bars = Vec::with_capacity(days.len() * 2);
    let mut labels = Vec::new();
    for (i, d) in days.iter().enumerate() {
        let x0 = f64::from(left) + i as f64 * slot;
        let day = short_date(d.day_start);
        for (k, (value, kind)) in [(d.sends, "sends"), (d.completed, "done")]
            .into_iter()
            .enumerate()
        {
            let h = value as f64 / ymax * plot_h;
            bars.push(Bar {
                x: f(x0 + slot * 0.1 + k as f64 * (bar_w + slot * 0.04)),
                y: f(f64::from(baseline) - h),
                w: f(bar_w),
                h: f(h),
                kind,
                title: format!(
                    "{}: {} sends, {} completed",
                    date(d.day_start),
                    d.sends,
                    d.completed
                ),
            });
        }
        if (days.len() - 1 - i).is_multiple_of(7) {
            let last = i + 1 == days.len();
            labels.push(Label {
                x: f(if last { x0 + slot } else { x0 + slot / 2.0 }),
                text: day,
                anchor: if last { "end" } else { "middle" },
            });
        }
    }
    let ticks = (0..=4u64)
        .map(|k| Tick {
            y: f(f64::from(baseline) - k.saturating_mul(step) as f64 / ymax * plot_h),
            label: k.saturating_mul(step),
        })
        .collect();
    let (sends, completed) = sums(days);
    Chart {
        width,
        height,
        left,
        right: width - right,
        baseline,
        bars,
        ticks,
        labels,
        empty: max == 0,
        summary: format!(
            "Sends and completed verifications per day over the last {} days: {sends} sends, {completed} completed.",
            days.len()
        ),
    }
}

fn channel_rows(stats: Vec<ChannelStats>) -> Vec<ChannelRow> {
    stats
        .into_iter()
        .map(|c| ChannelRow {
            name: if c.channel.is_empty() {
                "(no channel: failed before sending)".to_owned()
            } else {
                c.channel
            },
            attempted: c.attempted,
            succeeded: c.succeeded,
            failed: c.failed,
            rate: percent(c.succeeded, c.attempted),
            value: c.succeeded.saturating_mul(100) / c.attempted.max(1),
        })
        .collect()
}

pub async fn page(State(console): State<Console>, ctx: AccountCtx) -> Result<Response, PageError> {
    let store = &console.app.store;
    let id = &ctx.account.customer_id;
    let today = day_start(console.now());
    let since = today - (DAYS - 1) * DAY_MS;
    let until = today + DAY_MS;
    let days = store.daily_stats(id, since, until).await?;
    let channels = store.channel_stats(id, since, until).await?;
    let page = DashboardPage {
        chrome: ctx.chrome(&console, "Dashboard", "dashboard"),
        credits: ctx.account.credits,
        test_credits: ctx.account.test_credits,
        today: Totals::of(days.iter().filter(|d| d.day_start == today)),
        month: Totals::of(&days),
        chart: chart(&days),
        days: days
            .iter()
            .rev()
            .map(|d| DayRow {
                date: date(d.day_start),
                sends: d.sends,
                completed: d.completed,
                rate: percent(d.completed, d.sends),
            })
            .collect(),
        channels: channel_rows(channels),
    };
    Ok(render(&page))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(i: i64, sends: u64, completed: u64) -> DailyStats {
        DailyStats {
            day_start: i * DAY_MS,
            sends,
            completed,
        }
    }

    #[test]
    fn steps_are_round_numbers() {
        assert_eq!(nice_step(1), 1);
        assert_eq!(nice_step(3), 5);
        assert_eq!(nice_step(7), 10);
        assert_eq!(nice_step(11), 20);
        assert_eq!(nice_step(2500), 5000);
    }

    #[test]
    fn bars_scale_to_the_busiest_day_and_stay_inside_the_plot() {
        let days: Vec<_> = (0..30)
            .map(|i| day(i, (i as u64) % 9, (i as u64) % 4))
            .collect();
        let c = chart(&days);
        assert_eq!(c.bars.len(), 60);
        assert!(!c.empty);
        for b in &c.bars {
            let (x, y, h): (f64, f64, f64) = (
                b.x.parse().unwrap(),
                b.y.parse().unwrap(),
                b.h.parse().unwrap(),
            );
            assert!(x >= f64::from(c.left) && x < f64::from(c.right), "{}", b.x);
            assert!(h >= 0.0 && y >= 0.0 && y + h <= f64::from(c.baseline) + 0.1);
        }
        // The top tick is at least the largest value (8) and a round number
        // not far above it, so the busiest day's bar fills most of the plot.
        let top = c.ticks.last().unwrap();
        assert!((8..=10).contains(&top.label), "top tick {}", top.label);
        // Every bar's height is its value on that scale: day i's pair is
        // sends then completed.
        let plot_h = f64::from(c.baseline) - top.y.parse::<f64>().unwrap();
        for (j, b) in c.bars.iter().enumerate() {
            let d = &days[j / 2];
            let value = if j % 2 == 0 { d.sends } else { d.completed };
            let want = value as f64 / top.label as f64 * plot_h;
            let h: f64 = b.h.parse().unwrap();
            assert!(
                (h - want).abs() < 0.06,
                "bar {j}: height {h}, want {want:.1}"
            );
            assert_eq!(b.kind, if j % 2 == 0 { "sends" } else { "done" });
        }
        let tallest = c
            .bars
            .iter()
            .map(|b| b.h.parse::<f64>().unwrap())
            .fold(0.0, f64::max);
        assert!(tallest >= 0.8 * plot_h, "tallest bar {tallest} of {plot_h}");
        // Labels a week apart, the last one today's.
        assert_eq!(c.labels.len(), 5);
        assert_eq!(c.labels.last().unwrap().text, short_date(29 * DAY_MS));
    }

    #[test]
    fn an_idle_month_draws_flat_and_says_so() {
        let days: Vec<_> = (0..30).map(|i| day(i, 0, 0)).collect();
        let c = chart(&days);
        assert!(c.empty);
        assert!(c.bars.iter().all(|b| b.h == "0.0"));
        assert_eq!(percent(0, 0), "–");
        assert_eq!(percent(1, 3), "33.3%");
    }
}
