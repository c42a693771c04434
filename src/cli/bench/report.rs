//! The bench report: a JSON document with a stable schema (`docs/benchmarks.md`), a table for
//! the terminal, and an SVG plot (latency CDF; request phases stacked).

use std::collections::BTreeMap;
use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;
use serde::Serialize;

use super::http::Sample;
use super::stats::{summarize, Summary};

/// Phases drawn stacked, in request order.
pub const STACKED: [&str; 5] = ["queue", "spawn", "boot", "connect", "respond"];

/// `dust-bench/1`: see docs/benchmarks.md.
#[derive(Debug, Serialize)]
pub struct Report {
    /// Schema id; bumped on incompatible change.
    pub schema: &'static str,
    /// What was driven.
    pub target: String,
    /// Measured requests.
    pub requests: usize,
    /// Concurrent clients.
    pub concurrency: usize,
    /// Unmeasured warm-up requests before.
    pub warmup: usize,
    /// Wall time of the measured run, seconds.
    pub duration_s: f64,
    /// Measured requests per second.
    pub throughput_rps: f64,
    /// Transport failures (no HTTP status).
    pub errors: usize,
    /// Responses by status code.
    pub status_counts: BTreeMap<String, usize>,
    /// Requests served by a pre-built shell / by a cold one (from Server-Timing).
    pub warm_requests: usize,
    /// See `warm_requests`.
    pub cold_requests: usize,
    /// Percentiles in ms: `client` (connect -> last byte), each Server-Timing phase, and
    /// `host` (total - guest: what the VMM and summoner spend, guest execution excluded).
    pub latency_ms: BTreeMap<String, Summary>,
    /// Every measured request.
    pub samples: Vec<Sample>,
}

impl Report {
    /// Build from samples.
    pub fn new(
        target: String,
        concurrency: usize,
        warmup: usize,
        samples: Vec<Sample>,
        secs: f64,
    ) -> Self {
        let mut series: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        let mut status_counts = BTreeMap::new();
        for s in &samples {
            series.entry("client".into()).or_default().push(s.client_ms);
            for (k, v) in &s.phases {
                series.entry(k.clone()).or_default().push(*v);
            }
            if let (Some(t), Some(g)) = (s.phases.get("total"), s.phases.get("guest")) {
                series
                    .entry("host".into())
                    .or_default()
                    .push((t - g).max(0.0));
            }
            *status_counts.entry(s.status.to_string()).or_insert(0) += 1;
        }
        Self {
            schema: "dust-bench/1",
            target,
            requests: samples.len(),
            concurrency,
            warmup,
            duration_s: secs,
            throughput_rps: if secs > 0.0 {
                samples.len() as f64 / secs
            } else {
                0.0
            },
            errors: samples.iter().filter(|s| s.status == 0).count(),
            status_counts,
            warm_requests: samples.iter().filter(|s| s.warm == Some(true)).count(),
            cold_requests: samples.iter().filter(|s| s.warm == Some(false)).count(),
            latency_ms: series
                .iter()
                .map(|(k, v)| (k.clone(), summarize(v)))
                .collect(),
            samples,
        }
    }

    /// The terminal table.
    pub fn table(&self) -> String {
        let mut out = format!(
            "{} requests, concurrency {}, {:.1} s, {:.1} req/s, errors {}, statuses {:?}, warm {} / cold {}\n",
            self.requests,
            self.concurrency,
            self.duration_s,
            self.throughput_rps,
            self.errors,
            self.status_counts,
            self.warm_requests,
            self.cold_requests
        );
        out += &format!(
            "{:<10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}\n",
            "ms", "p50", "p90", "p99", "p99.9", "max", "mean"
        );
        let order = [
            "client", "total", "host", "guest", "queue", "spawn", "boot", "connect", "respond",
        ];
        let mut names: Vec<&String> = self.latency_ms.keys().collect();
        names.sort_by_key(|n| order.iter().position(|o| o == n).unwrap_or(order.len()));
        for name in names {
            let s = &self.latency_ms[name];
            out += &format!(
                "{:<10} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3}\n",
                name, s.p50, s.p90, s.p99, s.p999, s.max, s.mean
            );
        }
        out
    }

    /// Write the SVG plot.
    pub fn svg(&self, path: &Path) -> Result<(), String> {
        draw(self, path).map_err(|e| format!("{}: {e}", path.display()))
    }
}

fn draw(r: &Report, path: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::new(path, (1000, 800)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(400);

    draw_cdf(&top, r)?;
    draw_phases(&bottom, r)?;
    root.present()?;
    Ok(())
}

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;

/// The client latency CDF.
fn draw_cdf(area: &Area<'_>, r: &Report) -> Result<(), Box<dyn std::error::Error>> {
    let mut client: Vec<f64> = r.samples.iter().map(|s| s.client_ms).collect();
    client.sort_by(f64::total_cmp);
    let xmax = client.last().copied().unwrap_or(1.0).max(0.001) * 1.05;
    let mut cdf = ChartBuilder::on(area)
        .caption(
            "client latency CDF (connect -> last byte)",
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(48)
        .build_cartesian_2d(0.0..xmax, 0.0..1.0)?;
    cdf.configure_mesh()
        .x_desc("ms")
        .y_desc("fraction")
        .draw()?;
    let n = client.len().max(1) as f64;
    cdf.draw_series(LineSeries::new(
        client
            .iter()
            .enumerate()
            .map(|(i, v)| (*v, (i + 1) as f64 / n)),
        &BLUE,
    ))?;
    Ok(())
}

/// The server phases of (at most about 400 of) the requests, stacked, sorted by client
/// latency.
fn draw_phases(area: &Area<'_>, r: &Report) -> Result<(), Box<dyn std::error::Error>> {
    let mut by_total: Vec<&Sample> = r.samples.iter().collect();
    by_total.sort_by(|a, b| a.client_ms.total_cmp(&b.client_ms));
    let step = (by_total.len() / 400).max(1);
    let shown: Vec<&Sample> = by_total.into_iter().step_by(step).collect();
    let ymax = shown
        .iter()
        .map(|s| STACKED.iter().filter_map(|p| s.phases.get(*p)).sum::<f64>())
        .fold(0.001, f64::max)
        * 1.05;
    let mut bars = ChartBuilder::on(area)
        .caption(
            "server phases per request (sorted by client latency)",
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(48)
        .build_cartesian_2d(0.0..shown.len().max(1) as f64, 0.0..ymax)?;
    bars.configure_mesh()
        .x_desc("request")
        .y_desc("ms")
        .draw()?;
    let colors = [&RED, &MAGENTA, &BLUE, &GREEN, &CYAN];
    for (pi, phase) in STACKED.iter().enumerate() {
        let color = colors[pi % colors.len()];
        bars.draw_series(shown.iter().enumerate().map(|(i, s)| {
            let below: f64 = STACKED[..pi].iter().filter_map(|p| s.phases.get(*p)).sum();
            let h = s.phases.get(*phase).copied().unwrap_or(0.0);
            Rectangle::new(
                [(i as f64, below), (i as f64 + 1.0, below + h)],
                color.filled(),
            )
        }))?
        .label(*phase)
        .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled()));
    }
    bars.configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}
