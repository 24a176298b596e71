//! `tikv-drill --plot FILE.svg`: the walk's timeline as a picture. One strip
//! per counter (PD GetStore calls, connection attempts, messages delivered,
//! refused and reported), each on its own scale over a shared time axis.
//! Each step of the walk gets a band of equal width (time runs linearly
//! inside it, its duration written under its name), so a 10 ms step stays
//! as legible as a 10 s one. A sample closes the step it names: the band of
//! step S runs from the sample before S's first to S's last. Plain SVG.

use crate::report::{Counters, Report};

const WIDTH: f64 = 960.0;
const LEFT: f64 = 190.0;
const RIGHT: f64 = 30.0;
const TOP: f64 = 84.0;
const STRIP: f64 = 92.0;
const GAP: f64 = 14.0;

/// The strips: label, colour, and how to read the counter.
type Series = (&'static str, &'static str, fn(&Counters) -> u64);

const SERIES: [Series; 5] = [
    ("PD GetStore calls", "#1f77b4", |c| c.get_store_calls),
    ("connection attempts", "#ff7f0e", |c| c.connection_attempts),
    ("messages delivered", "#2ca02c", |c| c.delivered),
    ("messages refused", "#9467bd", |c| c.refused),
    ("messages reported", "#d62728", |c| c.reported),
];

const BANDS: [&str; 2] = ["#f4f4f4", "#e8eef7"];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The report's timeline as an SVG document; `Err` when it has fewer than
/// two samples (a walk mode that keeps no timeline).
pub fn svg(report: &Report) -> Result<String, String> {
    let tl = &report.timeline;
    if tl.len() < 2 {
        return Err(format!(
            "the {} walk kept no timeline to plot ({} samples)",
            report.mode,
            tl.len()
        ));
    }
    // Runs of samples naming the same step, each from the sample before it.
    let mut runs: Vec<(String, u64, u64)> = vec![];
    for w in tl.windows(2) {
        match runs.last_mut() {
            Some(r) if r.0 == w[1].step => r.2 = w[1].t_ms,
            _ => runs.push((w[1].step.clone(), w[0].t_ms, w[1].t_ms)),
        }
    }
    let plot_w = WIDTH - LEFT - RIGHT;
    let band = plot_w / runs.len() as f64;
    let x = |t: u64| {
        let i = runs.iter().position(|r| t <= r.2).unwrap_or(runs.len() - 1);
        let (from, to) = (runs[i].1, runs[i].2);
        let f = if to > from {
            (t.saturating_sub(from)) as f64 / (to - from) as f64
        } else {
            1.0
        };
        LEFT + band * (i as f64 + f.min(1.0))
    };
    let height = TOP + SERIES.len() as f64 * (STRIP + GAP) + 40.0;
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" font-family=\"sans-serif\" font-size=\"11\">\n\
         <rect width=\"{w}\" height=\"{h}\" fill=\"white\"/>\n\
         <text x=\"{l}\" y=\"20\" font-size=\"14\" font-weight=\"bold\">tikv-drill: a store walked through removal ({mode}, PD {pd}): {verdict}</text>\n",
        w = WIDTH,
        h = height,
        l = LEFT,
        mode = esc(&report.mode),
        pd = esc(&report.pd_flavor),
        verdict = if report.passed() { "PASS" } else { "FAIL" },
    );
    let bottom = TOP + SERIES.len() as f64 * (STRIP + GAP) - GAP;
    for (i, (step, from, to)) in runs.iter().enumerate() {
        let x0 = LEFT + band * i as f64;
        out.push_str(&format!(
            "<rect x=\"{:.1}\" y=\"{}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{}\"/>\n",
            x0,
            TOP - 8.0,
            band,
            bottom - TOP + 8.0,
            BANDS[i % 2]
        ));
        out.push_str(&format!(
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\" fill=\"#222\">{}</text>\n\
             <text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\" fill=\"#666\">{}</text>\n",
            x0 + band / 2.0,
            // Names alternate between two lines so neighbours never overlap.
            if i % 2 == 0 { TOP - 42.0 } else { TOP - 28.0 },
            esc(step),
            x0 + band / 2.0,
            TOP - 14.0,
            duration(to - from)
        ));
    }
    for (k, (label, colour, get)) in SERIES.iter().enumerate() {
        let y0 = TOP + k as f64 * (STRIP + GAP);
        let max = tl
            .iter()
            .map(|s| get(&s.counters))
            .max()
            .unwrap_or(0)
            .max(1) as f64;
        let y = |v: u64| y0 + STRIP - STRIP * (v as f64 / max);
        out.push_str(&format!(
            "<line x1=\"{l}\" y1=\"{b:.1}\" x2=\"{r}\" y2=\"{b:.1}\" stroke=\"#999\"/>\n\
             <text x=\"{tx}\" y=\"{ty:.1}\" text-anchor=\"end\" fill=\"{c}\" font-weight=\"bold\">{label}</text>\n\
             <text x=\"{tx}\" y=\"{my:.1}\" text-anchor=\"end\" fill=\"#666\">max {max}</text>\n",
            l = LEFT,
            r = WIDTH - RIGHT,
            b = y0 + STRIP,
            tx = LEFT - 8.0,
            ty = y0 + STRIP / 2.0,
            my = y0 + STRIP / 2.0 + 14.0,
            c = colour,
            label = label,
            max = max as u64,
        ));
        // Each segment at the value its closing sample read: what the
        // counter had reached by the end of that stretch of the step.
        let mut d = format!("M{:.1},{:.1}", x(tl[0].t_ms), y(get(&tl[0].counters)));
        for w in tl.windows(2) {
            d.push_str(&format!(
                " V{:.1} H{:.1}",
                y(get(&w[1].counters)),
                x(w[1].t_ms)
            ));
        }
        out.push_str(&format!(
            "<path d=\"{}\" fill=\"none\" stroke=\"{}\" stroke-width=\"2\"/>\n",
            d, colour
        ));
    }
    out.push_str(&format!(
        "<text x=\"{l}\" y=\"{y:.1}\" fill=\"#444\">cumulative counts, each strip on its own scale; one band per step, {total} in all</text>\n</svg>\n",
        l = LEFT,
        y = bottom + 22.0,
        total = duration(tl[tl.len() - 1].t_ms - tl[0].t_ms),
    ));
    Ok(out)
}

fn duration(ms: u64) -> String {
    if ms < 1000 {
        format!("{} ms", ms)
    } else {
        format!("{:.1} s", ms as f64 / 1000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counters(n: u64) -> Counters {
        Counters {
            get_store_calls: n,
            connection_attempts: 2 * n,
            delivered: 1,
            refused: 0,
            reported: n * n,
        }
    }

    #[test]
    fn draws_every_strip_and_step() {
        let mut r = Report::new("in-process", "old");
        assert!(svg(&r).is_err(), "nothing to plot");
        r.sample("start", counters(0));
        assert!(svg(&r).is_err(), "one sample: no step to draw");
        r.sample("Up", counters(1));
        r.sample("Up", counters(2));
        r.sample("Tombstone <stopped>", counters(3));
        let s = svg(&r).unwrap();
        // Two steps, two bands (the start sample opens the first).
        assert_eq!(s.matches("<rect ").count(), 1 + 2);
        for (label, _, _) in SERIES {
            assert!(s.contains(label), "{}", label);
        }
        assert!(
            s.contains("Tombstone &lt;stopped&gt;"),
            "escaped step label"
        );
        assert_eq!(s.matches("<path ").count(), SERIES.len());
        assert!(s.contains("max 9"), "reported's own scale");
        assert!(s.starts_with("<svg") && s.trim_end().ends_with("</svg>"));
    }
}
