//! Every registered experiment's `smoke` preset runs end to end (on the fixtures, in seconds)
//! and leaves a complete run directory; an interrupted run resumes from its checkpoints.

use std::path::Path;

use tessera_experiments::{IndexEntry, RunOptions, Scale, find, registry, run, run_all};

fn smoke(out: &Path) -> RunOptions {
    RunOptions {
        scale: Scale::Smoke,
        seed: 1,
        out_root: out.to_path_buf(),
        ..RunOptions::default()
    }
}

#[test]
fn every_experiment_runs_at_smoke_scale_and_the_index_links_them() {
    let out = tempfile::tempdir().unwrap();
    let index = run_all(&smoke(out.path())).unwrap();
    let entries: Vec<IndexEntry> =
        serde_json::from_slice(&std::fs::read(index.join("index.json")).unwrap()).unwrap();
    assert_eq!(entries.len(), registry().len());
    let md = std::fs::read_to_string(index.join("index.md")).unwrap();
    for exp in registry() {
        let entry = entries.iter().find(|e| e.name == exp.name()).unwrap();
        assert!(entry.error.is_none(), "{}: {:?}", exp.name(), entry.error);
        let done_dir = entry.dir.clone().unwrap();
        let run_id = done_dir.file_name().unwrap().to_str().unwrap().to_string();
        assert!(md.contains(&format!("{}/{run_id}/report.md", exp.name())), "{md}");
        for f in ["run.json", "record.json", "report.md"] {
            assert!(done_dir.join(f).is_file(), "{}: no {f}", exp.name());
        }
        let record: serde_json::Value =
            serde_json::from_slice(&std::fs::read(done_dir.join("record.json")).unwrap()).unwrap();
        for key in ["config", "seed", "environment", "wall_seconds", "figures", "data"] {
            assert!(record.get(key).is_some(), "{}: record lacks {key}", exp.name());
        }
        assert!(
            record["environment"]["versions"]["burn"]
                .as_str()
                .is_some_and(|v| v.starts_with("0.22")),
            "{record}"
        );
        let report = std::fs::read_to_string(done_dir.join("report.md")).unwrap();
        let svgs: Vec<_> = std::fs::read_dir(&done_dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.path().extension().is_some_and(|x| x == "svg"))
            .collect();
        assert!(!svgs.is_empty(), "{}: no plots", exp.name());
        for s in &svgs {
            let name = s.file_name().into_string().unwrap();
            assert!(report.contains(&name), "{}: report does not show {name}", exp.name());
        }
        let latest = std::fs::read_to_string(out.path().join(exp.name()).join("latest")).unwrap();
        assert_eq!(latest.trim(), run_id);
    }
}

#[test]
fn quickstart_smoke_reports_one_screen_and_reuses_its_models() {
    let out = tempfile::tempdir().unwrap();
    let first = run(find("quickstart").unwrap(), &smoke(out.path())).unwrap();
    let f = &first.record.figures;
    assert_eq!(f["cached"], false);
    let (dense, pruned) = (&f["dense"], &f["pruned"]);
    // 8x fewer weights asked for; FLOPs fall too; two mappings x fault rates simulated.
    let kept = |m: &serde_json::Value| m["weights"][0].as_f64().unwrap();
    assert!(kept(dense) / kept(pruned) >= 7.99, "{f}");
    assert!(pruned["flops"][0].as_u64() < dense["flops"][0].as_u64());
    assert_eq!(pruned["reram"].as_array().unwrap().len(), 2);
    let report = std::fs::read_to_string(first.dir.join("report.md")).unwrap();
    // The mapping comes from tessera-search's rule with block sizes timed here.
    for needle in
        ["test top-1", "latency", "ReRAM top-1", "block-punched:", "smallest block", "trained now"]
    {
        assert!(report.contains(needle), "report lacks {needle}:\n{report}");
    }
    // The pruned model as standalone source, with only its kept weights.
    let source = std::fs::read_to_string(first.dir.join("lenet5-pruned.rs")).unwrap();
    assert!(source.contains("fn main()") && source.contains("pub fn run("));
    assert_eq!(f["emitted"][2].as_f64().unwrap(), kept(pruned), "{f}");
    let second = run(find("quickstart").unwrap(), &smoke(out.path())).unwrap();
    assert_eq!(second.record.figures["cached"], true);
    assert_eq!(second.record.figures["pruned"]["top1"], pruned["top1"]);
    let report = std::fs::read_to_string(second.dir.join("report.md")).unwrap();
    assert!(report.contains("found in the cache"));
}

#[test]
fn scheme_mapping_and_npas_smoke_evaluate_every_arm_and_log_every_search() {
    let out = tempfile::tempdir().unwrap();
    let opts = RunOptions { only: vec!["resnet20".into()], ..smoke(out.path()) };
    let done = run(find("scheme-mapping").unwrap(), &opts).unwrap();
    let r = &done.record.figures[0];
    let arms: Vec<&str> =
        r["baselines"].as_array().unwrap().iter().map(|b| b["arm"].as_str().unwrap()).collect();
    assert_eq!(arms[0], "dense");
    assert!(arms.iter().any(|a| a.starts_with("uniform block-punched:4x4")), "{arms:?}");
    assert_eq!(arms.iter().filter(|a| a.starts_with("rule @")).count(), 2, "{arms:?}");
    for s in r["searches"].as_array().unwrap() {
        assert_eq!(s["evaluated"].as_array().unwrap().len(), 4);
        assert!(s["best"]["latency_ms"].as_f64().unwrap() > 0.0);
    }
    // Dense arm: every layer dense, all MACs kept.
    assert_eq!(r["baselines"][0]["mac_fraction"].as_f64().unwrap(), 1.0);
    // Selected on held-out training images: every compared arm scored again on the test ones.
    let compared = r["baselines"].as_array().unwrap().iter();
    for b in compared.chain(r["searches"].as_array().unwrap().iter().map(|s| &s["best"])) {
        assert!((0.0..=1.0).contains(&b["test_top1"].as_f64().unwrap()), "{b}");
    }
    assert!(done.dir.join("logs/resnet20-fashion/npas-0.5.json").is_file());
    assert!(done.dir.join("tables/resnet20-fashion.json").is_file());
    assert!(done.dir.join("pareto-resnet20-fashion.svg").is_file());

    let done = run(find("npas").unwrap(), &smoke(out.path())).unwrap();
    assert_eq!(done.record.figures[0]["validation"][0], 64);
    let t = &done.record.figures[0]["targets"];
    for target in t.as_array().unwrap() {
        let methods: Vec<&str> = target["searches"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["method"].as_str().unwrap())
            .collect();
        assert_eq!(methods, ["npas", "random", "random-feasible", "rule"]);
        // Selected on held-out training images, each best scored again on the test images.
        for s in target["searches"].as_array().unwrap() {
            let test = s["test_top1"].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&test), "{s}");
        }
        assert_eq!(target["searches"][0]["cost"][0], 4);
        assert_eq!(target["searches"][1]["best_so_far"].as_array().unwrap().len(), 4);
        // Evaluations over the target, counted again from random search's log.
        let log: serde_json::Value = serde_json::from_slice(
            &std::fs::read(done.dir.join(format!(
                "logs/resnet20-fashion/random-{}.json",
                target["fraction"].as_f64().unwrap()
            )))
            .unwrap(),
        )
        .unwrap();
        let target_ms = target["target_ms"].as_f64().unwrap();
        let over = log["evaluations"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["measurement"]["latency_ms"].as_f64().unwrap() > target_ms)
            .count();
        assert_eq!(target["searches"][1]["over_target"].as_u64().unwrap() as usize, over);
    }
    let log: serde_json::Value = serde_json::from_slice(
        &std::fs::read(done.dir.join("logs/resnet20-fashion/random-0.3.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(log["evaluations"].as_array().unwrap().len(), 4);
    let log: serde_json::Value = serde_json::from_slice(
        &std::fs::read(done.dir.join("logs/resnet20-fashion/random-feasible-0.3.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(log["header"]["method"], "random-feasible");
    assert_eq!(log["evaluations"].as_array().unwrap().len(), 4);
    let report = std::fs::read_to_string(done.dir.join("report.md")).unwrap();
    assert!(report.contains("Best NPAS configuration") && report.contains("not judged"));
    assert!(report.contains("its test top-1") && report.contains("held-out training images"));
}

#[test]
fn dense_baselines_smoke_figures() {
    let out = tempfile::tempdir().unwrap();
    let done = run(find("dense-baselines").unwrap(), &smoke(out.path())).unwrap();
    let runs = done.record.figures["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 4);
    for r in runs {
        let name = r["name"].as_str().unwrap();
        let top1 = r["top1"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&top1), "{name}: top-1 {top1}");
        assert!(
            r["flops_per_image"].as_u64().unwrap() > 0 && r["params"].as_u64().unwrap() > 0,
            "{name}"
        );
        // The exported IR computes what burn computes (f32 vs f64 summation only).
        assert!(r["export_rel_diff"].as_f64().unwrap() < 1e-4, "{name}: {}", r["export_rel_diff"]);
        // On fixtures no target can be claimed.
        assert!(r["target_met"].is_null(), "{name}");
        // A saved-model directory that loads back to the same architecture.
        let saved = done.dir.join("models").join(name);
        assert!(saved.join("ir/graph.json").is_file() && saved.join("model.bpk").is_file());
        let card = tessera_models::saved::load_card(&saved).unwrap();
        assert_eq!(card.model.name(), r["model"].as_str().unwrap(), "{name}");
        assert_eq!(r["history"].as_array().unwrap().len(), 2, "{name}: two epochs");
    }
    // Caffe's LeNet-5 FLOPs, by hand: conv1 20*25*24*24, conv2 50*500*8*8, fc 800*500 +
    // 500*10 multiply-adds, times 2; its 430.5K weights.
    let lenet = &runs[0];
    let macs = 20 * 25 * 24 * 24 + 50 * 500 * 8 * 8 + 800 * 500 + 500 * 10;
    assert_eq!(lenet["flops_per_image"].as_u64().unwrap(), 2 * macs);
    assert_eq!(
        lenet["weight_params"].as_u64().unwrap(),
        (20 * 25 + 50 * 500 + 800 * 500 + 500 * 10) as u64
    );
}

#[test]
fn an_interrupted_run_resumes_to_the_same_numbers() {
    let out = tempfile::tempdir().unwrap();
    let opts = RunOptions { only: vec!["lenet5".into()], ..smoke(out.path()) };
    let exp = find("dense-baselines").unwrap();
    let straight = run(exp, &opts).unwrap();
    // Simulate an interruption after the first epoch: a run directory with run.json and the
    // epoch-1 checkpoint but no record.
    let other = tempfile::tempdir().unwrap();
    let first =
        run(exp, &RunOptions { out_root: other.path().to_path_buf(), ..opts.clone() }).unwrap();
    std::fs::remove_file(first.dir.join("record.json")).unwrap();
    let ck = first.dir.join("checkpoints").join("lenet5-mnist");
    // Rewind the checkpoint to "one epoch done" by training a one-epoch-stopped copy.
    std::fs::remove_dir_all(&ck).unwrap();
    {
        use tessera_models::train::{Checkpoints, NoHooks, train};
        let cfg: tessera_experiments::dense_baselines::DenseBaselinesConfig =
            serde_json::from_value(first.record.config.clone()).unwrap();
        let r = &cfg.runs[0];
        let tr = tessera_data::load(
            r.dataset,
            tessera_data::Split::Train,
            &tessera_data::Source::Fixtures,
            Some(tessera_data::Normalization::mnist()),
        )
        .unwrap();
        let device = opts.backend.train_device(opts.seed);
        let model = tessera_models::with_seed(&device, opts.seed, || {
            tessera_models::zoo::Lenet5Config::caffe().init(&device)
        })
        .unwrap();
        let stop = Checkpoints { stop_after_epochs: Some(1), ..Checkpoints::new(&ck, false) };
        train(model, &tr, None, &r.train, &device, &mut NoHooks, Some(&stop)).unwrap();
    }
    let resumed =
        run(exp, &RunOptions { out_root: other.path().to_path_buf(), resume: true, ..opts })
            .unwrap();
    assert_eq!(resumed.dir, first.dir, "resume continues the unfinished run directory");
    assert!(resumed.record.resumed);
    let a = &straight.record.figures["runs"][0];
    let b = &resumed.record.figures["runs"][0];
    assert_eq!(a["top1"], b["top1"]);
    assert_eq!(a["history"][1]["train_loss"], b["history"][1]["train_loss"]);
}

#[test]
fn unknown_names_and_scales_are_errors() {
    let err = find("nope").err().unwrap().to_string();
    assert!(err.contains("dense-baselines"), "{err}");
    assert!("huge".parse::<Scale>().is_err());
}

#[test]
fn prune_schemes_smoke_starts_from_dense_baselines_and_hits_its_rates() {
    let out = tempfile::tempdir().unwrap();
    let dense = run(find("dense-baselines").unwrap(), &smoke(out.path())).unwrap();
    let opts = RunOptions { dense_from: Some(dense.dir.clone()), ..smoke(out.path()) };
    let done = run(find("prune-schemes").unwrap(), &opts).unwrap();
    let studies = done.record.figures["studies"].as_array().unwrap();
    assert_eq!(studies.len(), 2);
    for s in studies {
        let name = s["name"].as_str().unwrap();
        // The dense model is the dense-baselines one, and its top-1 is what that run measured
        // on the same test images.
        let from = dense.dir.join("models").join(name);
        assert_eq!(s["dense_model"].as_str().unwrap(), from.display().to_string());
        for c in s["cells"].as_array().unwrap() {
            let rate = c["cell"]["rate"].as_f64().unwrap();
            let compression = c["compression"].as_f64().unwrap();
            // Measured whole-model compression reaches the rate (blocks round a little up).
            assert!(
                compression >= rate * 0.999 && compression <= rate * 1.35,
                "{name} {}: {compression} for {rate}",
                c["cell"]
            );
            assert!(
                (c["drop"].as_f64().unwrap()
                    - (s["dense_top1"].as_f64().unwrap() - c["top1"].as_f64().unwrap()))
                .abs()
                    < 1e-12
            );
            // The pruned model directory carries the masks, at the kept fractions reported.
            let id = format!(
                "{}-{}x-{}",
                c["cell"]["scheme"].as_str().unwrap(),
                rate,
                c["cell"]["method"].as_str().unwrap()
            )
            .replace([':', '+'], "-");
            let dir = done.dir.join("models").join(name).join(&id);
            let masks = tessera_models::saved::load_masks(&dir.join("masks.safetensors")).unwrap();
            for l in c["layers"].as_array().unwrap() {
                let (_, m) = masks.get(l[0].as_str().unwrap()).unwrap();
                assert!((m.density() - l[3].as_f64().unwrap()).abs() < 1e-12, "{id}: {l}");
            }
            assert!(dir.join("ir/graph.json").is_file(), "{id}");
        }
        // Fixtures never claim a target.
        assert!(s["checks"].as_array().unwrap().iter().all(|c| c["met"].is_null()));
    }
    // A dense model of another architecture is refused, naming the directory.
    let wrong = tempfile::tempdir().unwrap();
    let lenet = dense.dir.join("models").join("lenet5-mnist");
    let target = wrong.path().join("models").join("resnet20-fashion");
    std::fs::create_dir_all(&target).unwrap();
    for f in ["card.json", "model.bpk"] {
        std::fs::copy(lenet.join(f), target.join(f)).unwrap();
    }
    let bad = RunOptions {
        dense_from: Some(wrong.path().to_path_buf()),
        only: vec!["resnet20".into()],
        ..smoke(out.path())
    };
    let err = run(find("prune-schemes").unwrap(), &bad).unwrap_err().to_string();
    assert!(err.contains("--dense-from") && err.contains("resnet20-fashion"), "{err}");
    // A directory without any saved model is refused, naming where it looked.
    let empty = tempfile::tempdir().unwrap();
    let none = RunOptions { dense_from: Some(empty.path().to_path_buf()), ..bad };
    let err = run(find("prune-schemes").unwrap(), &none).unwrap_err().to_string();
    assert!(err.contains("--dense-from") && err.contains("card.json"), "{err}");
}

#[test]
fn privacy_prune_smoke_reports_both_flows() {
    let out = tempfile::tempdir().unwrap();
    let done = run(find("privacy-prune").unwrap(), &smoke(out.path())).unwrap();
    for s in done.record.figures["studies"].as_array().unwrap() {
        assert!(s["target_met"].is_null(), "fixtures claim nothing");
        let cells = s["cells"].as_array().unwrap();
        assert!(!cells.is_empty());
        for c in cells {
            let (a, p) = (c["admm_top1"].as_f64().unwrap(), c["privacy_top1"].as_f64().unwrap());
            assert!((c["gap"].as_f64().unwrap() - (a - p)).abs() < 1e-12);
            for k in ["admm_compression", "privacy_compression"] {
                let x = c[k].as_f64().unwrap();
                assert!(x >= 0.999 * c["rate"].as_f64().unwrap(), "{k} {x}");
            }
        }
        // The pretrained dense model was saved in the run (no --dense-from).
        let name = s["name"].as_str().unwrap();
        assert!(done.dir.join("dense").join(name).join("card.json").is_file());
    }
}

#[test]
fn reram_faults_and_forms_smoke_report_every_arm_and_design() {
    let out = tempfile::tempdir().unwrap();
    let opts = RunOptions { only: vec!["lenet".into()], ..smoke(out.path()) };
    let done = run(find("reram-faults").unwrap(), &opts).unwrap();
    let study = &done.record.figures["studies"][0];
    assert!(study["target_met"].is_null(), "fixtures claim nothing");
    let arms = study["arms"].as_array().unwrap();
    let arm = |label: &str| arms.iter().find(|a| a["arm"]["label"] == label).unwrap();
    // Fault-free, differential is two-column's complement: the same integer readings.
    assert_eq!(arm("two-column")["clean_top1"], arm("differential")["clean_top1"]);
    for a in arms {
        let points = a["points"].as_array().unwrap();
        assert_eq!(points.len(), 2);
        assert_eq!(points[0]["chips"], 1, "p = 0 needs one chip");
        assert_eq!(points[1]["chips"], 2);
    }
    // One column per slice instead of two.
    let forms = arms.iter().find(|a| a["arm"]["polarized"] == true).unwrap();
    assert!(forms["crossbars"].as_u64() < arm("two-column")["crossbars"].as_u64());

    let done = run(find("forms").unwrap(), &smoke(out.path())).unwrap();
    let model = &done.record.figures["studies"][0]["models"][0];
    let designs = model["designs"].as_array().unwrap();
    assert_eq!(designs.len(), 4);
    let (isaac8, forms) = (&designs[1], &designs[3]);
    assert_eq!(forms["adc_bits"], 4);
    // Offset and polarized both spend one column per slice: the same crossbars.
    assert_eq!(isaac8["crossbars"], forms["crossbars"]);
    assert!(forms["leading_zero_fraction"].as_f64().unwrap() <= 1.0);
    assert!(model["forms_over_isaac"].is_array());
}

#[test]
fn sparse_training_smoke_trains_every_method_at_its_budget() {
    let out = tempfile::tempdir().unwrap();
    let done = run(find("sparse-training").unwrap(), &smoke(out.path())).unwrap();
    let study = &done.record.figures["studies"][0];
    let cells = study["cells"].as_array().unwrap();
    // Dense, five methods, the two data-efficiency cells and the random-removal control.
    assert_eq!(cells.len(), 9);
    let cell = |m: &str, de: bool| {
        cells.iter().find(|c| c["method"] == m && c["data_efficiency"] == de).unwrap()
    };
    for m in ["static", "set", "rigl", "mest-em", "mest-ems"] {
        let c = cell(m, false);
        let s = c["final_sparsity"].as_f64().unwrap();
        assert!((0.9..0.91).contains(&s), "{m}: sparsity {s}");
        assert!(c["sparse_bytes"].as_u64() < c["dense_bytes"].as_u64(), "{m}");
        assert_eq!(c["iterations"], 6, "{m}");
        assert_eq!(c["curve"].as_array().unwrap().len(), 2, "{m}");
    }
    assert_eq!(cell("static", false)["updates"], 0);
    // The soft bound held 15% of the weights at its peak.
    let peak = cell("mest-ems", false)["peak_density"].as_f64().unwrap();
    assert!((0.149..0.151).contains(&peak), "{peak}");
    let em_peak = cell("mest-em", false)["peak_density"].as_f64().unwrap();
    assert!(em_peak < 0.101, "{em_peak}");
    assert!(
        cell("mest-ems", false)["peak_sparse_bytes"].as_u64()
            > cell("mest-ems", false)["sparse_bytes"].as_u64()
    );
    for m in ["dense", "mest-ems"] {
        let c = cell(m, true);
        let n = c["examples"].as_u64().unwrap();
        assert_eq!(c["removal"]["removed"].as_u64().unwrap(), (n as f64 * 0.24).floor() as u64);
        assert_eq!(c["removal"]["epoch"], 1);
        assert_eq!(c["ranking"]["kind"], "forgetting_then_margin", "{m}");
    }
    // The control removes as many dense examples at the same epoch, at random.
    let control = cells.last().unwrap();
    assert_eq!(control["method"], "dense");
    assert_eq!(control["ranking"]["kind"], "random");
    assert_eq!(control["removal"]["removed"], cell("dense", true)["removal"]["removed"]);
    assert_eq!(control["removal"]["epoch"], 1);
    for c in study["checks"].as_array().unwrap() {
        assert!(c["met"].is_null(), "fixtures claim nothing: {c}");
    }
}
