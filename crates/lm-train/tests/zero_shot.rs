//! Zero-shot evaluation: choice log-likelihoods against transformers on the tiny fixture models
//! (`tests/fixtures/models/make_zero_shot_fixtures.py`), the three task formats, and
//! `lm-train eval MODEL --task FILE` on a run and on a HuggingFace directory.

mod common;

use std::path::Path;

use candle_core::Device;
use common::*;
use lm_train::zero_shot::{read_task, score_choices, Scorer, TaskFormat};

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/models")
        .join(name)
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// Each choice's summed log-likelihood within 1e-4 of transformers', and the same greedy flag,
/// for GPT-2, BART, T5 v1.0 and v1.1.
#[test]
fn choice_logliks_equal_transformers() {
    let cpu = &Device::Cpu;
    for name in ["gpt2", "bart", "t5", "t5v11"] {
        let dir = fixture(name);
        let scorer = match name {
            "gpt2" => Scorer::Gpt(lm_models::gpt::Gpt::from_hf_dir(&dir, cpu).unwrap().0),
            "bart" => Scorer::Seq2Seq(Box::new(
                lm_models::bart::Bart::from_hf_dir(&dir, cpu).unwrap().0,
            )),
            _ => Scorer::Seq2Seq(Box::new(
                lm_models::t5::T5::from_hf_dir(&dir, cpu).unwrap().0,
            )),
        };
        let reference: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("zero_shot.json")).unwrap()).unwrap();
        for case in reference["cases"].as_array().unwrap() {
            let choices: Vec<Vec<u32>> = case["choices"]
                .as_array()
                .unwrap()
                .iter()
                .map(ids)
                .collect();
            let got = score_choices(&scorer, cpu, &ids(&case["context"]), &choices).unwrap();
            for (i, s) in got.iter().enumerate() {
                let want = case["loglik"][i].as_f64().unwrap();
                assert!(
                    (s.loglik - want).abs() < 1e-4,
                    "{name} choice {i}: {} vs {want}",
                    s.loglik
                );
                assert_eq!(
                    s.greedy,
                    case["greedy"][i].as_bool().unwrap(),
                    "{name} choice {i}"
                );
                assert_eq!(s.tokens, choices[i].len());
            }
        }
    }
}

/// HellaSwag (`ctx` or `ctx_a` + `ctx_b`, endings after a space, label as an integer or a
/// string), LAMBADA (the last word after its space), generic choices as written; a label outside
/// the choices, a missing field and an empty file are errors naming the file and line; the
/// format is told from the first item's fields.
#[test]
fn task_formats_read_as_the_harness_reads_them() {
    let tmp = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let p = tmp.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let hs = write(
        "hs.jsonl",
        "{\"ctx_a\": \"A man\", \"ctx_b\": \"is\", \"endings\": [\"sitting.\", \"running.\"], \"label\": \"1\"}\n\
         {\"ctx\": \"Then\", \"endings\": [\"a\", \"b\"], \"label\": 0}\n",
    );
    let items = read_task(&hs, TaskFormat::Hellaswag).unwrap();
    assert_eq!(items[0].context, "A man is");
    assert_eq!(items[0].choices, vec![" sitting.", " running."]);
    assert_eq!((items[0].label, items[1].label), (1, 0));
    let lam = write("lam.jsonl", "{\"text\": \"the cat sat on the mat\"}\n");
    let items = read_task(&lam, TaskFormat::Lambada).unwrap();
    assert_eq!(
        (items[0].context.as_str(), items[0].choices[0].as_str()),
        ("the cat sat on the", " mat")
    );
    let ch = write(
        "ch.jsonl",
        "{\"context\": \"2+2=\", \"choices\": [\"4\", \"5\"], \"label\": 0}\n",
    );
    assert_eq!(
        read_task(&ch, TaskFormat::Choices).unwrap()[0].choices,
        vec!["4", "5"]
    );
    for (path, want) in [
        (&hs, TaskFormat::Hellaswag),
        (&lam, TaskFormat::Lambada),
        (&ch, TaskFormat::Choices),
    ] {
        assert_eq!(lm_train::zero_shot::detect_format(path).unwrap(), want);
    }
    for (text, problem) in [
        (
            "{\"context\": \"x\", \"choices\": [\"a\"], \"label\": 3}",
            "ch.jsonl:1: label 3 but 1 choices",
        ),
        (
            "\n{\"choices\": [\"a\"], \"label\": 0}",
            "ch.jsonl:2: no \"context\"",
        ),
        ("", "no task items"),
    ] {
        let e = read_task(&write("ch.jsonl", text), TaskFormat::Choices)
            .unwrap_err()
            .to_string();
        assert!(e.contains(problem), "{e}");
    }
}

/// `eval RUN --task FILE` on a tiny GPT run writes `RUN/eval-<task>.json` (and no
/// `results.json`), with the accuracy the choices' scores give and its standard error
/// √(p(1−p)/(n−1)); a HuggingFace copy of the checkpoint prints the same report; a BERT run is
/// refused saying why.
#[test]
fn eval_with_a_task_writes_its_report_beside_the_run() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::write(d.join("corpus.txt"), &lm_train::data::SHAKESPEARE[..30_000]).unwrap();
    let run = pretrained(d, "gpt-shakespeare-bpe");
    let lines: Vec<String> = (0..6)
        .map(|i| {
            format!(
                "{{\"context\": \"First Citizen:\\nBefore we proceed any further, hear me {i}\", \"choices\": [\" speak.\", \" zzqx.\", \" the\"], \"label\": {}}}",
                i % 3
            )
        })
        .collect();
    std::fs::write(d.join("mc.jsonl"), lines.join("\n")).unwrap();
    let out = lm_train(&["eval", "gpt-shakespeare-bpe", "--task", "mc.jsonl"], d);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("eval-mc.json")).unwrap()).unwrap();
    assert!(!run.join("results.json").exists());
    assert_eq!(
        (report["items"].as_u64(), report["format"].as_str()),
        (Some(6), Some("choices"))
    );
    // The same accuracy from the scores, item by item.
    let (scorer, tok) = lm_train::zero_shot::load(
        &lm_train::model_ref::ModelRef::parse(&run).unwrap(),
        &Device::Cpu,
    )
    .unwrap();
    let items = read_task(&d.join("mc.jsonl"), TaskFormat::Choices).unwrap();
    let right = items
        .iter()
        .filter(|it| {
            let choices: Vec<Vec<u32>> =
                it.choices.iter().map(|c| tok.encode(c).unwrap()).collect();
            let s = score_choices(
                &scorer,
                &Device::Cpu,
                &tok.encode(&it.context).unwrap(),
                &choices,
            )
            .unwrap();
            let best = (0..s.len())
                .max_by(|&a, &b| s[a].loglik.total_cmp(&s[b].loglik))
                .unwrap();
            best == it.label
        })
        .count();
    let p = right as f64 / 6.0;
    assert_eq!(report["accuracy"].as_f64().unwrap(), p);
    assert!(
        (report["accuracy_stderr"].as_f64().unwrap() - (p * (1.0 - p) / 5.0).sqrt()).abs() < 1e-12
    );
    // A HuggingFace directory is not a run: its report is printed.
    let ckpt = lm_train::checkpoint::latest_checkpoint(&run).unwrap();
    let hf = d.join("hf");
    std::fs::create_dir_all(&hf).unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(ckpt.join(f), hf.join(f)).unwrap();
    }
    let printed = lm_train(&["eval", "hf", "--task", "mc.jsonl"], d);
    let text = String::from_utf8_lossy(&printed.stdout);
    assert!(
        text.contains(&format!("\"accuracy\": {}", report["accuracy"])),
        "{text}"
    );
    pretrained(d, "bert-mlm-nsp");
    assert_one_line_error(
        &lm_train(&["eval", "bert-mlm-nsp", "--task", "mc.jsonl"], d),
        "a bert model does not generate",
    );
}
