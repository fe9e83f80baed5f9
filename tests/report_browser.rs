//! The report as a person reads it: rendered from a small fixture eval artifact (no model runs), opened
//! in headless Chromium (Debian's `chromium`; `scripts/ci/chromium.sh install`), which must load it
//! without console errors and show its tables and plots. Fails (never skips) when Chromium is absent.
use arrow::array::{ArrayRef, BooleanArray, Float64Array, StringArray, UInt32Array, UInt64Array};
use arrow::record_batch::RecordBatch;
use mmboundary::metrics::calibration::{AnswerConfidence, EceParams};
use mmboundary::report::intervals::{metric_of, CellRule, ItemScores, Metric};
use mmboundary::stages::eval::{metrics_schema, sentences_schema};
use mmboundary::stages::report::{render, ReportParams};
use std::process::Command;
use std::sync::Arc;

const STATEMENTS: [(&str, f64); 4] =
    [("I am fully confident.", 1.0), ("I am fairly sure.", 0.75), ("I am not sure.", 0.5), ("I doubt this.", 0.25)];

/// (variant, split) → items, deterministic: variant k's sentences are right with a skill that rises with k,
/// its statements track rightness more closely with k; the vanilla variant states nothing.
fn fixture() -> Vec<(String, String, Vec<(ItemScores, Vec<Option<usize>>)>)> {
    let mut out = Vec::new();
    let mut x: u64 = 12345;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x % 10_000) as f64 / 10_000.0
    };
    for (k, v) in ["vanilla", "sft", "full"].iter().enumerate() {
        for split in ["val", "test", "ood"] {
            let mut items = Vec::new();
            for q in 0..24 {
                let n = 2 + (q % 3);
                let (mut sents, mut which) = (Vec::new(), Vec::new());
                for _ in 0..n {
                    let right = next() < 0.5 + 0.1 * k as f64;
                    if k == 0 {
                        sents.push((right, 0.5));
                        which.push(None);
                    } else {
                        let s = if right == (next() < 0.5 + 0.2 * k as f64) {
                            if next() < 0.5 {
                                0
                            } else {
                                1
                            }
                        } else {
                            2 + (q % 2)
                        };
                        sents.push((right, STATEMENTS[s].1));
                        which.push(Some(s));
                    }
                }
                let answer = if sents.last().unwrap().0 { 1.0 } else { 0.0 };
                items.push((ItemScores { item_id: format!("{split}-{q:02}"), answer_correct: answer, sentences: sents }, which));
            }
            if *v == "full" && split == "val" {
                // A chain without any judged sentence: no sentence rows, counted in eval's responses and
                // accuracy (as wrong), absent from the calibration metrics.
                items.push((ItemScores { item_id: "val-24".into(), answer_correct: 0.0, sentences: vec![] }, vec![]));
            }
            out.push((v.to_string(), split.to_string(), items));
        }
    }
    out
}

fn batches() -> (RecordBatch, RecordBatch) {
    let rule = CellRule { ece: EceParams { bins: 20 }, answer_confidence: AnswerConfidence::FinalSentence };
    let f = fixture();
    let (mut sv, mut ss, mut si, mut sx, mut st, mut stmt, mut conf, mut corr, mut lvl, mut ans, mut text, mut judge, mut mc) =
        (vec![], vec![], vec![], vec![], vec![], vec![], vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
    let (mut mv, mut ms, mut ml, mut mr, mut mn, mut me, mut mm, mut mb, mut ma, mut mf, mut mu) =
        (vec![], vec![], vec![], vec![], vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
    for (v, split, items) in &f {
        for (it, which) in items {
            for (t, (&(right, c), w)) in it.sentences.iter().zip(which).enumerate() {
                sv.push(v.clone());
                ss.push(split.clone());
                si.push(it.item_id.clone());
                sx.push(t as u32);
                st.push(format!("Sentence {t} about <item> {} & its image.", it.item_id));
                stmt.push(w.map(|s| STATEMENTS[s].0.to_string()));
                conf.push(w.map(|_| c));
                corr.push(right);
                lvl.push(if t == 0 { "perception" } else { "reasoning" }.to_string());
                ans.push(it.answer_correct);
                text.push("chain text".to_string());
                judge.push("minilm > 0.64".to_string());
                mc.push(Some(c));
            }
        }
        let all: Vec<&ItemScores> = items.iter().map(|x| &x.0).collect();
        let m = |metric| metric_of(&all, metric, &rule).unwrap();
        for level in ["all", "perception", "reasoning"] {
            mv.push(v.clone());
            ms.push(split.clone());
            ml.push(level.to_string());
            mr.push(items.len() as u64);
            mn.push(items.iter().map(|x| x.0.sentences.len() as u64).sum::<u64>());
            let a = level == "all";
            me.push(if a { m(Metric::Ece) } else { None });
            mm.push(if a { m(Metric::Mece) } else { Some(0.3) });
            mb.push(if a { m(Metric::Brier) } else { Some(0.2) });
            ma.push(if a { m(Metric::Accuracy) } else { None });
            mf.push(Some(0.4));
            mu.push(if a { m(Metric::Auroc) } else { None });
        }
    }
    let n = mv.len();
    let s = |v: Vec<String>| Arc::new(StringArray::from(v)) as ArrayRef;
    // Each sentence's judge scores against the reference (eval's input; the report does not read them).
    let mut sim = arrow::array::ListBuilder::new(arrow::array::Float64Builder::new());
    for &c in &corr {
        sim.values().append_value(if c { 0.9 } else { 0.1 });
        sim.append(true);
    }
    let sentences = RecordBatch::try_new(
        sentences_schema(),
        vec![
            s(sv),
            s(ss),
            s(si),
            Arc::new(UInt32Array::from(sx)),
            s(st),
            Arc::new(StringArray::from(stmt)),
            Arc::new(Float64Array::from(conf)),
            Arc::new(BooleanArray::from(corr)),
            s(lvl),
            Arc::new(Float64Array::from(ans)),
            s(text),
            s(judge),
            Arc::new(Float64Array::from(mc)),
            Arc::new(sim.finish()),
        ],
    )
    .unwrap();
    let metrics = RecordBatch::try_new(
        metrics_schema(),
        vec![
            s(mv),
            s(ms),
            s(ml),
            Arc::new(UInt64Array::from(mr)),
            Arc::new(UInt64Array::from(mn)),
            Arc::new(Float64Array::from(me)),
            Arc::new(Float64Array::from(mm)),
            Arc::new(Float64Array::from(mb)),
            Arc::new(Float64Array::from(ma)),
            Arc::new(Float64Array::from(mf)),
            Arc::new(Float64Array::from(mu)),
            Arc::new(UInt64Array::from(vec![20u64; n])),
            s(vec!["final_sentence".to_string(); n]),
        ],
    )
    .unwrap();
    (metrics, sentences)
}

fn chromium(args: &[&str]) -> std::process::Output {
    let profile = tempfile::tempdir().unwrap();
    let mut cmd = Command::new("chromium");
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--enable-logging=stderr",
        "--v=0",
    ])
    .arg(format!("--user-data-dir={}", profile.path().display()))
    .args(args);
    cmd.output().unwrap_or_else(|e| {
        panic!("cannot run `chromium` ({e}): this test needs Debian's headless Chromium; install it with `scripts/ci/chromium.sh install`")
    })
}

#[test]
fn report_renders_in_chromium_with_tables_plots_and_intervals() {
    let (metrics, sentences) = batches();
    let files =
        render(&metrics, &sentences, &ReportParams::default(), "Dataset: fixture. Model: none. Judge: minilm-cosine > 0.64.").unwrap();
    // Real tables, not Markdown in <pre>; intervals in Table 1; the paired full − sft table.
    assert!(!files.html.contains("<pre>") && !files.html.contains("|---|"), "report.html still holds Markdown text");
    assert!(files.html.contains("<th>ECE</th>") && files.html.contains("<span class=\"ci\"> ["), "no interval cells");
    assert!(files.html.contains("ECE full − sft"), "no paired difference table");
    assert!(
        files.markdown.contains("| split | variant | items | ECE |")
            && files.markdown.contains("| val | full | 25 |")
            && files.markdown.contains("| val | sft | 24 |")
    );
    // The histogram names the variants.
    assert!(files.confidence_svg.contains(">\nsft\n<") && files.confidence_svg.contains(">\nfull\n<"), "histogram legend");
    assert!(!files.confidence_svg.contains("level 1") && !files.html.contains("1 = vanilla"));

    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("report.html");
    std::fs::write(&page, &files.html).unwrap();
    let out = chromium(&["--dump-dom", &format!("file://{}", page.display())]);
    let (dom, log) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "chromium failed ({}): {log}", out.status);
    let console: Vec<&str> = log.lines().filter(|l| l.contains("CONSOLE") || l.contains("Uncaught") || l.contains("SyntaxError")).collect();
    assert!(console.is_empty(), "console errors while loading report.html:\n{}", console.join("\n"));
    assert!(dom.contains("<h1>MMBoundary report</h1>"), "the page did not load: {}", &dom[..dom.len().min(500)]);
    assert_eq!(dom.matches("<svg").count(), 2, "two plots expected in the rendered DOM");
    assert!(dom.matches("<table>").count() >= 5, "tables missing from the rendered DOM");
    assert!(dom.contains("Reliability (val)") && dom.contains("stated confidence"), "plot text missing");
    // The escaped example text survives as text.
    assert!(dom.contains("&lt;item&gt;") && dom.contains("&amp; its image"), "example text not escaped");
    if let Ok(shot) = std::env::var("MMB_REPORT_SCREENSHOT") {
        let out = chromium(&[&format!("--screenshot={shot}"), "--window-size=1280,2400", &format!("file://{}", page.display())]);
        assert!(out.status.success(), "screenshot failed: {}", String::from_utf8_lossy(&out.stderr));
    }
}

#[test]
fn report_refuses_intervals_of_numbers_eval_did_not_report() {
    let (metrics, sentences) = batches();
    // Replace one ECE value: the recomputed value no longer matches, and the error names the cell.
    let mut cols: Vec<ArrayRef> = metrics.columns().to_vec();
    let ece = metrics.column_by_name("ece").unwrap().as_any().downcast_ref::<Float64Array>().unwrap();
    let mut v: Vec<Option<f64>> = ece.iter().collect();
    v[0] = v[0].map(|x| x + 0.01);
    cols[5] = Arc::new(Float64Array::from(v));
    let bad = RecordBatch::try_new(metrics.schema(), cols).unwrap();
    let e = render(&bad, &sentences, &ReportParams::default(), "").unwrap_err().to_string();
    assert!(e.contains("ECE of variant `vanilla`, split `val`"), "{e}");
}

/// The paper's Table 3 is the report's last section on both pages when given: its heading, note, the
/// number of samples, and each split's line with its number of items (in report.html as a real table).
#[test]
fn report_shows_table_3_when_given() {
    let (metrics, sentences) = batches();
    let t3 = "Self-consistency samples per item: 4.\n\n| split | items | Mean | Var | Std | <0.1 |\n|---|---|---|---|---|---|\n\
              | val | 2 | 0.1250 | 0.0156 | 0.1250 | 50 % |\n";
    let files = mmboundary::stages::report::render_all(&metrics, &sentences, &ReportParams::default(), "", None, Some(t3)).unwrap();
    let heading = mmboundary::stages::ice_sce::HEADING;
    assert!(files.markdown.ends_with(&format!("## {heading}\n\n{}\n\n{t3}", mmboundary::stages::ice_sce::NOTE)), "{}", files.markdown);
    assert!(files.html.contains(&format!("<h2>{heading}</h2>")), "no Table 3 section");
    let at = files.html.find("Self-consistency samples per item: 4.").expect("the samples line in report.html");
    assert!(
        files.html[at..].contains(
            "<td>val</td><td class=\"num\">2</td><td class=\"num\">0.1250</td><td class=\"num\">0.0156</td>\
             <td class=\"num\">0.1250</td><td class=\"num\">50 %</td>"
        ),
        "{}",
        &files.html[at..]
    );
    // Without it, neither page has the section.
    let plain = render(&metrics, &sentences, &ReportParams::default(), "").unwrap();
    assert!(!plain.markdown.contains(heading) && !plain.html.contains(heading));
}
