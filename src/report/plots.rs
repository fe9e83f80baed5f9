//! Plots as SVG (text stays text, so the page is small and sharp).
use plotters::prelude::*;

/// One bin of a reliability diagram.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReliabilityBin {
    pub lo: f64,
    pub hi: f64,
    pub count: usize,
    pub mean_confidence: f64,
    pub accuracy: f64,
}

/// Equal-width bins of (confidence, correct) pairs, binned exactly as ECE bins
/// ([`crate::metrics::calibration::ece_bin`]); empty bins are kept with count 0.
pub fn reliability_bins(pairs: &[(f64, bool)], bins: usize) -> Vec<ReliabilityBin> {
    let bins = bins.max(1);
    let mut acc = vec![(0usize, 0f64, 0usize); bins];
    for &(c, ok) in pairs {
        let b = crate::metrics::calibration::ece_bin(c, bins);
        acc[b].0 += 1;
        acc[b].1 += c;
        acc[b].2 += ok as usize;
    }
    acc.iter()
        .enumerate()
        .map(|(i, &(n, s, k))| ReliabilityBin {
            lo: i as f64 / bins as f64,
            hi: (i + 1) as f64 / bins as f64,
            count: n,
            mean_confidence: if n > 0 { s / n as f64 } else { 0.0 },
            accuracy: if n > 0 { k as f64 / n as f64 } else { 0.0 },
        })
        .collect()
}

/// A reliability diagram: accuracy per confidence bin against the diagonal of perfect calibration.
pub fn reliability_svg(title: &str, series: &[(&str, Vec<ReliabilityBin>)]) -> Result<String, String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (520, 440)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(14)
            .x_label_area_size(44)
            .y_label_area_size(56)
            .build_cartesian_2d(0f64..1f64, 0f64..1f64)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc("stated confidence (bin mean)")
            .y_desc("share of sentences right")
            .label_style(("sans-serif", 14))
            .axis_desc_style(("sans-serif", 15))
            .light_line_style(RGBColor(238, 238, 238))
            .draw()
            .map_err(|e| e.to_string())?;
        chart
            .draw_series(LineSeries::new([(0.0, 0.0), (1.0, 1.0)], BLACK.mix(0.4)))
            .map_err(|e| e.to_string())?
            .label("perfect calibration")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], BLACK.mix(0.4)));
        for (k, (name, bins)) in series.iter().enumerate() {
            let color = COLORS[k % COLORS.len()];
            let pts: Vec<(f64, f64)> = bins.iter().filter(|b| b.count > 0).map(|b| (b.mean_confidence, b.accuracy)).collect();
            chart
                .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
                .map_err(|e| e.to_string())?
                .label(*name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2)));
            chart.draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled()))).map_err(|e| e.to_string())?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .label_font(("sans-serif", 14))
            .border_style(BLACK.mix(0.3))
            .background_style(WHITE.mix(0.9))
            .draw()
            .map_err(|e| e.to_string())?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}

/// The series colors, shared by both plots so a variant has one color on the page.
const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// Histogram of stated confidence per variant: the share of each variant's sentences (with a statement)
/// in each equal-width bin, one bar per variant named in the legend (variants with different sentence
/// counts stay comparable).
pub fn confidence_histogram_svg(title: &str, groups: &[(&str, Vec<f64>)], bins: usize) -> Result<String, String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (520, 440)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let bins = bins.max(1);
        let shares: Vec<(&str, Vec<f64>)> = groups
            .iter()
            .map(|(name, v)| {
                let mut c = vec![0.0; bins];
                for &x in v {
                    c[((x.clamp(0.0, 1.0) * bins as f64) as usize).min(bins - 1)] += 1.0;
                }
                let n = v.len().max(1) as f64;
                (*name, c.into_iter().map(|k| k / n).collect())
            })
            .collect();
        let ymax = shares.iter().flat_map(|(_, c)| c.iter().copied()).fold(0.0f64, f64::max).max(0.05);
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(14)
            .x_label_area_size(44)
            .y_label_area_size(56)
            .build_cartesian_2d(0f64..1f64, 0f64..(ymax * 1.1).min(1.0))
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc("stated confidence")
            .y_desc("share of sentences")
            .label_style(("sans-serif", 14))
            .axis_desc_style(("sans-serif", 15))
            .light_line_style(RGBColor(238, 238, 238))
            .draw()
            .map_err(|e| e.to_string())?;
        // Grouped bars: within each bin, one bar per variant side by side.
        let w = 1.0 / bins as f64;
        let bar = w * 0.85 / shares.len().max(1) as f64;
        for (k, (name, c)) in shares.iter().enumerate() {
            let color = COLORS[k % COLORS.len()];
            chart
                .draw_series(c.iter().enumerate().map(|(i, &share)| {
                    let x0 = i as f64 * w + w * 0.075 + k as f64 * bar;
                    Rectangle::new([(x0, 0.0), (x0 + bar, share)], color.filled())
                }))
                .map_err(|e| e.to_string())?
                .label(*name)
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperMiddle)
            .label_font(("sans-serif", 14))
            .border_style(BLACK.mix(0.3))
            .background_style(WHITE.mix(0.9))
            .draw()
            .map_err(|e| e.to_string())?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bins_count_and_average() {
        let b = reliability_bins(&[(0.05, true), (0.07, false), (0.95, true), (1.0, true)], 10);
        assert_eq!(b[0].count, 2);
        assert!((b[0].mean_confidence - 0.06).abs() < 1e-12 && (b[0].accuracy - 0.5).abs() < 1e-12);
        assert_eq!(b[9].count, 2);
        assert_eq!(b.iter().map(|x| x.count).sum::<usize>(), 4);
    }

    #[test]
    fn bins_are_the_ece_bins_on_the_edges() {
        // 0.3 · 10 = 2.9999999999999996: a plain floor puts 0.3 in [0.2, 0.3); ECE puts it in [0.3, 0.4).
        let b = reliability_bins(&[(0.3, true), (0.6, false), (1.0, true), (0.0, false)], 10);
        assert_eq!((b[2].count, b[3].count, b[5].count, b[6].count, b[9].count, b[0].count), (0, 1, 0, 1, 1, 1));
        for c in [0.0, 0.05, 0.3, 0.35, 0.6, 0.7, 0.95, 1.0] {
            let i = crate::metrics::calibration::ece_bin(c, 20);
            assert!(i as f64 / 20.0 <= c && (c < (i + 1) as f64 / 20.0 || i == 19), "{c} in bin {i}");
        }
    }

    #[test]
    fn svgs_render_with_text() {
        let b = reliability_bins(&[(0.2, false), (0.8, true), (0.6, true)], 5);
        let s = reliability_svg("Reliability", &[("full", b)]).unwrap();
        assert!(s.starts_with("<svg") && s.contains("Reliability") && s.contains("full"));
        let h = confidence_histogram_svg("Stated confidence", &[("sft", vec![0.1, 0.2]), ("full", vec![0.9])], 10).unwrap();
        assert!(h.contains(">\nsft\n<") && h.contains(">\nfull\n<") && h.contains("share of sentences"), "{h}");
    }
}
