//! Tests of the bench's report: statistics against values worked out by
//! hand, when a peer ratio may be shown, and file names that never collide.

use super::*;

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

#[test]
fn stats_of_known_samples() {
    // 1, 2, 3: mean 2, variance (1 + 0 + 1) / 2 = 1.
    let s = Stats::of(&[3.0, 1.0, 2.0]).unwrap();
    assert_eq!((s.median, s.samples), (2.0, 3));
    assert!(close(s.mean, 2.0) && close(s.std_dev, 1.0), "{s:?}");
    // 1, 2, 3, 4: nearest-rank median is the 2nd value; mean 2.5;
    // variance (2.25 + 0.25 + 0.25 + 2.25) / 3 = 5/3.
    let s = Stats::of(&[4.0, 2.0, 1.0, 3.0]).unwrap();
    assert_eq!(s.median, 2.0);
    assert!(
        close(s.mean, 2.5) && close(s.std_dev, (5.0f64 / 3.0).sqrt()),
        "{s:?}"
    );
    // One sample: no spread.
    let s = Stats::of(&[7.5]).unwrap();
    assert_eq!((s.median, s.mean, s.std_dev), (7.5, 7.5, 0.0));
    assert_eq!(Stats::of(&[]), None);
}

const QWEN: u64 = 491_400_064;
const H200: &str = "NVIDIA H200 (GPU 0, cc 9.0, driver 580.159.04)";

/// The peer's figures are shown only for the same card, backend, file and
/// protocol: never a GPU ratio on a CPU run or another card.
#[test]
fn peer_only_where_the_comparison_is_fair() {
    let pp512 = Measure::Prefill { prompt: 512 };
    let tg128 = Measure::Decode { after: 0, gen: 128 };
    assert_eq!(
        peer_figure(BackendKind::Cuda, H200, QWEN, pp512),
        Some(50_200.0)
    );
    assert_eq!(
        peer_figure(BackendKind::Cuda, H200, QWEN, tg128),
        Some(870.0)
    );
    assert_eq!(
        peer_figure(
            BackendKind::Cuda,
            H200,
            QWEN,
            Measure::Decode {
                after: 4096,
                gen: 128
            }
        ),
        Some(783.0)
    );
    assert_eq!(
        peer_figure(
            BackendKind::Cuda,
            H200,
            QWEN,
            Measure::Batched {
                seqs: 64,
                prompt: 128,
                gen: 128
            }
        ),
        Some(10_979.0)
    );
    // The same file and protocol on the CPU, or on another card: none.
    assert_eq!(peer_figure(BackendKind::Cpu, H200, QWEN, pp512), None);
    assert_eq!(peer_figure(BackendKind::Cuda, H100, QWEN, pp512), None);
    assert_eq!(peer_figure(BackendKind::Cuda, H200, QWEN_LIKE, pp512), None);
    assert_eq!(
        peer_figure(
            BackendKind::Cuda,
            "NVIDIA H200 NVL (GPU 0, cc 9.0)",
            QWEN,
            pp512
        ),
        None,
        "another H200 model"
    );
    // Another protocol or another file: none.
    assert_eq!(
        peer_figure(
            BackendKind::Cuda,
            H200,
            QWEN,
            Measure::Prefill { prompt: 256 }
        ),
        None
    );
    assert_eq!(
        peer_figure(
            BackendKind::Cuda,
            H200,
            QWEN,
            Measure::Decode { after: 0, gen: 64 }
        ),
        None
    );
    assert_eq!(peer_figure(BackendKind::Cuda, H200, QWEN + 1, pp512), None);
    assert_eq!(
        peer_figure(
            BackendKind::Cuda,
            H200,
            QWEN,
            Measure::Batched {
                seqs: 8,
                prompt: 128,
                gen: 128
            }
        ),
        None,
        "the peer did not run 8 sequences"
    );
}

const QWEN_LIKE: u64 = 488_855_360;
const H100: &str = "NVIDIA H100 80GB HBM3 (GPU 0, cc 9.0, driver 13.0)";

/// Each card's run answers for its own card only, with its own source: the
/// H100 figures (measured side by side on 2026-12-06) for an H100 80GB HBM3,
/// not for an H100 PCIe, an H200 or a CPU run.
#[test]
fn each_card_has_its_own_peer_figures_and_source() {
    let pp512 = Measure::Prefill { prompt: 512 };
    let tg_after_4096 = Measure::Decode {
        after: 4096,
        gen: 128,
    };
    let eight = Measure::Batched {
        seqs: 8,
        prompt: 128,
        gen: 128,
    };
    let h100 = |m| peer_figure(BackendKind::Cuda, H100, QWEN_LIKE, m);
    assert_eq!(h100(pp512), Some(51_210.4));
    assert_eq!(h100(tg_after_4096), Some(852.0));
    assert_eq!(h100(eight), Some(3_979.9));
    assert_eq!(
        peer_figure(BackendKind::Cuda, H100, 97_666_368, pp512),
        Some(60_173.3)
    );
    let pcie = "NVIDIA H100 PCIe (GPU 0, cc 9.0)";
    assert_eq!(peer_figure(BackendKind::Cuda, pcie, QWEN_LIKE, pp512), None);
    assert_eq!(peer_figure(BackendKind::Cpu, H100, QWEN_LIKE, pp512), None);
    let h100_source = peer_source(BackendKind::Cuda, H100).unwrap();
    let h200_source = peer_source(BackendKind::Cuda, H200).unwrap();
    assert!(h100_source.contains("H100 80GB HBM3"), "{h100_source}");
    assert!(h200_source.contains("H200"), "{h200_source}");
    assert_eq!(peer_source(BackendKind::Cuda, pcie), None);
    assert_eq!(peer_source(BackendKind::Cpu, H100), None);
    assert_eq!(peer_cards(), "NVIDIA H200 or NVIDIA H100 80GB HBM3");
}

/// Two runs in the same second get two names; nothing is overwritten.
#[test]
fn a_run_never_overwrites_an_earlier_one() {
    let dir = std::env::temp_dir().join(format!("bench-stem-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let stem = "bench-SmolLM2-135M-Instruct.Q4_1-cpu";
    let a = claim_stem(&dir, stem, "20261204T221530Z").unwrap();
    std::fs::write(with_ext(&a, "json"), "first").unwrap();
    let b = claim_stem(&dir, stem, "20261204T221530Z").unwrap();
    assert_ne!(a, b);
    assert!(
        b.to_string_lossy().ends_with("20261204T221530Z-2"),
        "{}",
        b.display()
    );
    assert_eq!(
        std::fs::read_to_string(with_ext(&a, "json")).unwrap(),
        "first"
    );
    // The model's dots stay in the name.
    let csv = write_beside(&b, "csv", "x").unwrap();
    assert!(
        csv.to_string_lossy()
            .ends_with(".Q4_1-cpu-20261204T221530Z-2.csv"),
        "{}",
        csv.display()
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn file_time_is_compact_utc() {
    let stamp = RunStamp {
        timestamp: crate::shard::handle::rfc3339(1_795_863_599, 999),
        commit: "abc",
        source_sha256: "def",
        device: "cpu".into(),
    };
    assert_eq!(stamp.file_time(), "20261128T105959Z");
}
