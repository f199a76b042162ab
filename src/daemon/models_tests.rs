//! Unit tests of path confinement, size limits and memory planning (WORKER-4320–4323, 4225, 4422).
use super::*;

fn tree() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("models");
    std::fs::create_dir_all(root.join("sub")).unwrap();
    std::fs::write(root.join("a.gguf"), b"GGUF").unwrap();
    std::fs::write(root.join("sub/b.gguf"), b"GGUF").unwrap();
    std::fs::write(dir.path().join("outside.gguf"), b"GGUF").unwrap();
    (dir, root)
}

#[test]
fn paths_inside_the_root_resolve() {
    let (_d, root) = tree();
    let a = resolve_model_path(&root, "a.gguf").unwrap();
    assert_eq!(a, root.canonicalize().unwrap().join("a.gguf"));
    assert_eq!(resolve_model_path(&root, "sub/../a.gguf").unwrap(), a);
    let abs = root.join("sub/b.gguf");
    assert!(resolve_model_path(&root, abs.to_str().unwrap()).is_ok());
    assert_eq!(model_ref_of(&root, &a), "a.gguf");
}

/// A model root configured through a symbolic link (as a deployment may
/// point `model_root` at a mounted volume): relative names and absolute
/// paths written through the link both resolve, to the canonical file.
#[test]
fn a_root_reached_through_a_symlink_accepts_paths_under_it_either_way() {
    let (d, root) = tree();
    let link = d.path().join("models-link");
    std::os::unix::fs::symlink(&root, &link).unwrap();
    let want = root.canonicalize().unwrap().join("sub/b.gguf");
    assert_eq!(resolve_model_path(&link, "sub/b.gguf").unwrap(), want);
    let through_link = link.join("sub/b.gguf");
    assert_eq!(
        resolve_model_path(&link, through_link.to_str().unwrap()).unwrap(),
        want
    );
    let outside = d.path().join("outside.gguf");
    assert!(resolve_model_path(&link, outside.to_str().unwrap()).is_err());
}

#[test]
fn traversal_and_outside_paths_are_refused_naming_the_root() {
    let (d, root) = tree();
    let outside = d.path().join("outside.gguf");
    for r in [
        "../outside.gguf",
        "sub/../../outside.gguf",
        outside.to_str().unwrap(),
        "/etc/passwd",
    ] {
        let e = resolve_model_path(&root, r).unwrap_err();
        assert_eq!(e.code(), "MODEL_LOAD_FAILED");
        assert!(
            e.message().contains("outside the model root"),
            "{r}: {}",
            e.message()
        );
        assert!(
            e.message()
                .contains(root.canonicalize().unwrap().to_str().unwrap()),
            "{}",
            e.message()
        );
    }
}

#[test]
fn symlink_out_of_the_root_is_refused() {
    let (d, root) = tree();
    std::os::unix::fs::symlink(d.path().join("outside.gguf"), root.join("link.gguf")).unwrap();
    let e = resolve_model_path(&root, "link.gguf").unwrap_err();
    assert!(
        e.message().contains("outside the model root"),
        "{}",
        e.message()
    );
}

#[test]
fn missing_file_and_directory_are_refused() {
    let (_d, root) = tree();
    assert_eq!(
        resolve_model_path(&root, "nope.gguf").unwrap_err().code(),
        "MODEL_LOAD_FAILED"
    );
    assert!(resolve_model_path(&root, "sub")
        .unwrap_err()
        .message()
        .contains("not a regular file"));
}

#[test]
fn size_limit_is_checked_from_metadata() {
    let (_d, root) = tree();
    let p = root.join("a.gguf");
    assert_eq!(check_size(&p, 4).unwrap(), 4);
    let e = check_size(&p, 3).unwrap_err();
    assert!(e.message().contains("max_model_bytes"));
}

fn tiny_config() -> ModelConfig {
    ModelConfig {
        arch: crate::model::arch::Arch::Llama,
        n_layers: 2,
        d_model: 8,
        n_heads: 2,
        n_kv_heads: 1,
        head_dim: 4,
        ffn_dim: 16,
        vocab_size: 10,
        rope_base: 1e4,
        rope_style: crate::model::arch::RopeStyle::Norm,
        norm_eps: 1e-5,
        context_length: 100,
        tied_output: true,
        qkv_bias: false,
    }
}

#[test]
fn memory_estimate_counts_kv_for_the_planned_context() {
    let mc = tiny_config();
    let m = memory_estimate(BackendKind::Cpu, 1000, &mc, 50, 0, 1);
    assert_eq!(m.weights_bytes, 1000);
    // The CPU engine's KV pool holds whole pages of 16 positions: 50 -> 64.
    assert_eq!(m.kv_cache_bytes, 2 * 2 * 64 * 4 * 4);
    // The context is clamped to what the model was trained for (100 -> 112).
    assert_eq!(
        memory_estimate(BackendKind::Cpu, 1000, &mc, 1000, 0, 1).kv_cache_bytes,
        2 * 2 * 112 * 4 * 4
    );
    // A pool larger than the context (kv_cache_tokens): 200 -> 208; a
    // smaller one is raised to the context.
    assert_eq!(
        memory_estimate(BackendKind::Cpu, 1000, &mc, 50, 200, 1).kv_cache_bytes,
        2 * 2 * 208 * 4 * 4
    );
    assert_eq!(
        memory_estimate(BackendKind::Cpu, 1000, &mc, 50, 20, 1).kv_cache_bytes,
        m.kv_cache_bytes
    );
    assert!(m.scratch_bytes > 0);
}

/// The CUDA Plan must count what the CUDA engine allocates besides weights
/// and KV: the per-matrix dequant scratch of prefill, the top-k scratch and
/// the fixed cuBLAS workspace (the GPU test checks equality with `memory()`).
#[test]
fn cuda_estimate_counts_every_device_buffer() {
    let mc = tiny_config();
    let m = memory_estimate(BackendKind::Cuda, 1000, &mc, 50, 0, 1);
    assert_eq!(m.weights_bytes, 1000);
    // The pool holds whole pages of 32 positions: 50 -> 64.
    assert_eq!(m.kv_cache_bytes, 2 * 2 * 64 * 4 * 4);
    // A larger pool: 200 -> 224 positions; more sequences need more scratch.
    let big = memory_estimate(BackendKind::Cuda, 1000, &mc, 50, 200, 1);
    assert_eq!(big.kv_cache_bytes, 2 * 2 * 224 * 4 * 4);
    let many = memory_estimate(BackendKind::Cuda, 1000, &mc, 50, 0, 8);
    assert!(
        many.scratch_bytes > m.scratch_bytes,
        "8 sequences planned {} scratch bytes, 1 sequence {}",
        many.scratch_bytes,
        m.scratch_bytes
    );
    let dequant = (mc.n_heads * mc.head_dim).max(mc.ffn_dim) * mc.d_model * 4;
    assert!(
        m.scratch_bytes >= (crate::gpu::gemm::BLAS_WORKSPACE_BYTES + dequant) as u64,
        "scratch {} misses the cuBLAS workspace or the dequant scratch",
        m.scratch_bytes
    );
    // Clamped to the trained context like the engine.
    assert_eq!(
        memory_estimate(BackendKind::Cuda, 1000, &mc, 1000, 0, 1).kv_cache_bytes,
        2 * 2 * 128 * 4 * 4
    );
}

#[test]
fn default_shard_ids_are_identifiers() {
    assert_eq!(default_shard_id("worker-1"), "worker-1-shard-0");
    assert_eq!(default_shard_id("w 1/x"), "w1x-shard-0");
    assert_eq!(default_shard_id("///"), "shard-0");
    assert!(crate::http::validate::ident(&default_shard_id(&"x".repeat(300)), "shard_id").is_ok());
}

#[test]
fn host_memory_is_readable() {
    assert!(host_available_bytes().unwrap() > 0);
}
