//! The report's text: a Table-1-style Markdown table and a self-contained HTML page (inline SVG).
use std::fmt::Write;

/// One metrics row (level `all`, `perception` or `reasoning`).
#[derive(Debug, Clone, PartialEq)]
pub struct MetricsRow {
    pub variant: String,
    pub split: String,
    pub level: String,
    pub responses: u64,
    pub sentences: u64,
    pub ece: Option<f64>,
    pub mece: Option<f64>,
    /// Step-level Brier score (MECE's averaging, squared error).
    pub brier: Option<f64>,
    pub accuracy: Option<f64>,
    pub chain_f1: Option<f64>,
    pub auroc: Option<f64>,
}

/// One judged sentence of an example chain.
#[derive(Debug, Clone, PartialEq)]
pub struct ExampleSentence {
    pub sentence: String,
    pub statement: Option<String>,
    pub confidence: Option<f64>,
    pub correct: bool,
}

fn cell(v: Option<f64>) -> String {
    v.map(|x| format!("{x:.3}")).unwrap_or_else(|| "–".into())
}

/// A metric of a level-`all` row, with its column label.
type Column = (&'static str, fn(&MetricsRow) -> Option<f64>);

/// One row per variant and, per split, one cell per column (level `all`); the first column of a split is
/// labelled with the split's name.
fn per_split_table(rows: &[MetricsRow], splits: &[String], variants: &[String], columns: &[Column]) -> String {
    let mut s = String::from("| variant |");
    for sp in splits {
        for (i, (name, _)) in columns.iter().enumerate() {
            let label = match (i, name.is_empty()) {
                (0, true) => sp.clone(),
                (0, false) => format!("{sp} {name}"),
                _ => name.to_string(),
            };
            let _ = write!(s, " {label} |");
        }
    }
    s.push_str("\n|---|");
    s.push_str(&"---|".repeat(splits.len() * columns.len()));
    s.push('\n');
    for v in variants {
        let _ = write!(s, "| {v} |");
        for sp in splits {
            let row = rows.iter().find(|r| &r.variant == v && &r.split == sp && r.level == "all");
            for (_, metric) in columns {
                let _ = write!(s, " {} |", cell(row.and_then(metric)));
            }
        }
        s.push('\n');
    }
    s
}

/// The paper's Table 1 layout: one row per variant, ECE / MECE / Acc / F1 / AUROC per split (level `all`).
pub fn table1_markdown(rows: &[MetricsRow], splits: &[String], variants: &[String]) -> String {
    let columns: [Column; 5] =
        [("ECE", |r| r.ece), ("MECE", |r| r.mece), ("Acc", |r| r.accuracy), ("F1", |r| r.chain_f1), ("AUROC", |r| r.auroc)];
    per_split_table(rows, splits, variants, &columns)
}

/// Step-level Brier score by split (level `all`): the proper counterpart of MECE.
pub fn brier_markdown(rows: &[MetricsRow], splits: &[String], variants: &[String]) -> String {
    per_split_table(rows, splits, variants, &[("", |r| r.brier)])
}

/// Perception vs reasoning (the paper's Figure 4): MECE and chain F1 by chain level.
pub fn levels_markdown(rows: &[MetricsRow], split: &str, variants: &[String]) -> String {
    let mut s = String::from("| variant | perception MECE | perception F1 | reasoning MECE | reasoning F1 |\n|---|---|---|---|---|\n");
    for v in variants {
        let get = |lvl: &str| rows.iter().find(|r| &r.variant == v && r.split == split && r.level == lvl);
        let (p, r) = (get("perception"), get("reasoning"));
        let _ = writeln!(
            s,
            "| {v} | {} | {} | {} | {} |",
            cell(p.and_then(|x| x.mece)),
            cell(p.and_then(|x| x.chain_f1)),
            cell(r.and_then(|x| x.mece)),
            cell(r.and_then(|x| x.chain_f1))
        );
    }
    s
}

fn escape(t: &str) -> String {
    t.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// Example chains, each statement colored by whether its sentence was right.
pub fn examples_html(examples: &[(String, Vec<ExampleSentence>)]) -> String {
    let mut s = String::new();
    for (title, sents) in examples {
        let _ = write!(s, "<div class=\"ex\"><div class=\"q\">{}</div><p>", escape(title));
        for e in sents {
            let class = if e.correct { "ok" } else { "bad" };
            let _ = write!(s, "{} ", escape(&e.sentence));
            if let Some(st) = &e.statement {
                let conf = e.confidence.map(|c| format!(" title=\"confidence {c:.2}\"")).unwrap_or_default();
                let _ = write!(s, "<span class=\"{class}\"{conf}>{}</span> ", escape(st));
            }
        }
        s.push_str("</p></div>\n");
    }
    s
}

/// The whole page: Markdown tables rendered as preformatted text next to the figures (kept dependency-free).
pub fn html_page(title: &str, sections: &[(String, String)]) -> String {
    let mut s = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{t}</title><style>\
         body{{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}}\
         pre{{background:#f6f6f6;padding:1em;overflow-x:auto}} .figs svg{{margin:0.5em}}\
         .ok{{background:#d9f2d9}} .bad{{background:#f8d7d7}} .ex{{border-left:3px solid #ccc;padding-left:1em;margin:1em 0}}\
         .q{{font-weight:bold}}</style></head><body><h1>{t}</h1>\n",
        t = escape(title)
    );
    for (h, body) in sections {
        let _ = write!(s, "<h2>{}</h2>\n{body}\n", escape(h));
    }
    s.push_str("</body></html>\n");
    s
}

/// Markdown tables inside HTML.
pub fn pre(md: &str) -> String {
    format!("<pre>{}</pre>", escape(md))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(v: &str, sp: &str, lvl: &str, ece: f64) -> MetricsRow {
        MetricsRow {
            variant: v.into(),
            split: sp.into(),
            level: lvl.into(),
            responses: 1,
            sentences: 2,
            ece: Some(ece),
            mece: Some(0.5),
            brier: Some(ece / 2.0),
            accuracy: None,
            chain_f1: Some(0.25),
            auroc: Some(1.0),
        }
    }

    #[test]
    fn table_has_a_row_per_variant_and_dashes_for_gaps() {
        let rows = vec![row("sft", "val", "all", 0.125), row("full", "val", "all", 0.0625), row("full", "val", "perception", 0.9)];
        let t = table1_markdown(&rows, &["val".into(), "test".into()], &["sft".into(), "full".into()]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 4);
        assert!(lines[2].starts_with("| sft | 0.125 | 0.500 | – | 0.250 | 1.000 | – |"), "{}", lines[2]);
        assert!(lines[3].contains("0.062"));
        let l = levels_markdown(&rows, "val", &["full".into()]);
        assert!(l.contains("| full | 0.500 | 0.250 | – | – |"), "{l}");
        let b = brier_markdown(&rows, &["val".into(), "test".into()], &["sft".into(), "full".into()]);
        assert_eq!(b.lines().nth(2), Some("| sft | 0.062 | – |"), "{b}");
    }

    #[test]
    fn html_escapes_and_colors() {
        let ex = vec![(
            "Q <1>".to_string(),
            vec![ExampleSentence {
                sentence: "A & B.".into(),
                statement: Some("I am sure.".into()),
                confidence: Some(1.0),
                correct: false,
            }],
        )];
        let h = html_page("R", &[("Examples".into(), examples_html(&ex))]);
        assert!(h.contains("Q &lt;1&gt;") && h.contains("A &amp; B.") && h.contains("class=\"bad\""));
    }
}
