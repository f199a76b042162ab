//! What a kernel image is made of, in one place for the build script and
//! the worker (WORKER-4012, 4700; issue 12 point 4).
//!
//! `build.rs` includes this file through `#[path]` and compiles every kernel
//! file to CUBIN for the shipped architectures, so a worker on an sm_80,
//! sm_89 or sm_90 card starts without compiling anything; the worker uses the
//! same table, translation units, options and cache key when it has to fall
//! back to NVRTC at start-up. Both sides read this one file, so an image
//! built into the binary is what the fallback compiles with the same NVRTC
//! library, and the numerics version names the compiler rather than where
//! it ran. (NVRTC 13.0 itself does not always give the same bytes twice for
//! `matvec_rows.cu`: its PTX numbers registers differently from run to run;
//! the variants compared differ in register choice and instruction
//! placement, not in the arithmetic. A binary's built-in images are fixed.)
//!
//! Only `std`, `sha2` and cudarc's NVRTC bindings are used here (the build
//! script has no access to the rest of the crate).

use sha2::{Digest, Sha256};
use std::ffi::{CStr, CString};

/// The architectures whose CUBIN the binary carries: A100 (sm_80), L4 and
/// L40S (sm_89), H100 and H200 (sm_90). Others fall back to NVRTC.
pub const SHIPPED_ARCHS: &[&str] = &["sm_80", "sm_89", "sm_90"];

/// Rows per split-KV attention chunk (ATT_CHUNK in cuda/attention.cu, which
/// asserts it equals `KV_PAGE`).
pub const ATT_CHUNK: usize = 32;
/// Positions per page of the paged KV pool: one attention chunk, so a
/// chunk's rows are consecutive in the pool and a short request wastes at
/// most 31 positions. Handed to every kernel as `KV_PAGE`.
pub const KV_PAGE_TOKENS: usize = ATT_CHUNK;
/// Threads per block of the per-head split-KV decode attention,
/// `attn_partial` (`ATT_THREADS` in cuda/attention.cu): its fold of the
/// chunks works in tiles of this many, so its launch must use exactly this
/// block size (`attn_decode_<hd>` has its own, `AD_WARPS`).
pub const ATT_THREADS: usize = 128;
/// Most query heads per KV head the grouped decode attention
/// (`attn_decode_<hd>`) holds (`ATT_GROUP_MAX` in cuda/attention.cu);
/// larger groups take the per-head kernel.
pub const ATT_GROUP_MAX: usize = 8;
/// Warps per block of `attn_decode_<hd>` (`AD_WARPS` in cuda/attention.cu):
/// two a chunk, so a block covers AD_CHUNKS chunks (32 * AD_CHUNKS
/// positions), and it folds a group of up to AD_WARPS heads with a warp per
/// head.
pub const AD_WARPS: usize = 8;
/// Chunks one `attn_decode_<hd>` block covers (`AD_CHUNKS`): a chunk's two
/// warps split its scores by head and its value sums by dim.
pub const AD_CHUNKS: usize = AD_WARPS / 2;

/// Shape of the token-on-lane batched kernels (`_bt`, `_gu_bt` in
/// cuda/matvec_rows.cu, which receives these as BT_ROWS, BT_WARPS, BT_PAD):
/// output rows per block, warps per block (a half-warp per run of a
/// 1024-element chunk), floats per dequantized run in shared memory.
pub const BT_SHAPE: (usize, usize, usize) = (16, 16, 36);

/// Shape of the register-tiled batched kernels (`_tl`, `_gu_tl` in
/// cuda/matvec_tiles.cu, which receives these as TL_ROWS, TL_TOKENS,
/// TL_PAD): staging rows per block, tokens per block, floats per
/// dequantized run in shared memory. The kernel's thread tile (4 rows x 4
/// tokens, 256 threads) assumes 16 and 32.
pub const TL_SHAPE: (usize, usize, usize) = (16, 32, 36);

/// Shape of the tensor-core decode mat-vecs (`_mm`, `_gu_mm` in
/// cuda/matvec_mma.cu, which receives these as MM_ROWS, MM_WARPS,
/// MM_TOKENS, MM_PAD, MM_TILES): weight rows of one m16 tile, warps per
/// block (one run each per pass over a 16-run half chunk), token rows per
/// block (four n8 tiles), floats per dequantized run in shared memory
/// (34: a half-warp's 8-byte fragment loads hit 32 distinct banks), and
/// the most m16 tiles one block takes (`launch_shape::rows_mm_tiles`).
pub const MM_SHAPE: (usize, usize, usize, usize, usize) = (16, 8, 32, 34, 4);

/// The format pairs whose decode q/k/v projections run as one fused launch
/// although v's format differs from q's and k's (q and k share one):
/// (q/k suffix, its block type in cuda/common.cuh, v suffix, its type).
/// llama.cpp's Q4_K_M mix gives attn_v more bits in half the layers: q6_K
/// beside q4_K, or q8_0 beside q5_0 where the width is not a multiple of
/// 256 (Qwen2.5-0.5B). Each pair becomes `matvec_<qk>_<v>_qkv_st` and
/// `_qkv_bst` (QKV_MIXED_PAIRS, pasted into every translation unit and
/// expanded in cuda/matvec.cu); `QkvFormats::of` and the start-up kernel
/// list (`qkv::mixed_kernel_names`) read the same table.
pub const QKV_MIXED: &[(&str, &str, &str, &str)] = &[
    ("q5_0", "Q5_0", "q8_0", "Q8_0"),
    ("q4_k", "Q4K", "q6_k", "Q6K"),
    ("q5_k", "Q5K", "q6_k", "Q6K"),
];

/// The shared header every kernel file includes.
pub const COMMON_CUH: &str = include_str!("../../cuda/common.cuh");

/// Declares [`KERNEL_SOURCES`] from the file names, so the list of kernel
/// files is written once.
macro_rules! kernel_files {
    ($($file:literal),* $(,)?) => {
        /// Every kernel file: (file name, source). One op family per file.
        pub const KERNEL_SOURCES: &[(&str, &str)] =
            &[$(($file, include_str!(concat!("../../cuda/", $file)))),*];
    };
}

kernel_files!(
    "matvec.cu",
    "matvec_rows.cu",
    "matvec_tiles.cu",
    "matvec_mma.cu",
    "embed.cu",
    "rmsnorm.cu",
    "rope_kv.cu",
    "attention.cu",
    "attention_prefill.cu",
    "dequant.cu",
    "swiglu.cu",
    "topk.cu",
    "sha256.cu",
);

/// Fixed NVRTC options: IEEE division and square root, no flush-to-zero and
/// no fused multiply-add contraction chosen by the compiler, so the same
/// source gives the same arithmetic on every run (WORKER-4710). Explicit
/// `fmaf` in the kernels is still used where it was written.
pub const NVRTC_OPTIONS: &[&str] = &[
    "--fmad=false",
    "--ftz=false",
    "--prec-div=true",
    "--prec-sqrt=true",
    "-std=c++17",
];

/// The full translation unit of one kernel file: the constants the kernels
/// share with their launchers (defined above, once), then the header pasted
/// in place of its `#include "common.cuh"` line (NVRTC then needs no
/// include paths).
pub fn translation_unit(name: &str, src: &str) -> String {
    let body: String = src
        .lines()
        .map(|l| {
            if l.trim() == "#include \"common.cuh\"" {
                ""
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let (rows, warps, pad) = BT_SHAPE;
    let (tl_rows, tl_tokens, tl_pad) = TL_SHAPE;
    let (mm_rows, mm_warps, mm_tokens, mm_pad, mm_tiles) = MM_SHAPE;
    let qkv_mixed: String = QKV_MIXED
        .iter()
        .map(|(qa, ta, qb, tb)| format!(" X({qa}, {ta}, {qb}, {tb})"))
        .collect();
    format!(
        "#define KV_PAGE {KV_PAGE_TOKENS}\n#define ATT_CHUNK {ATT_CHUNK}\n#define ATT_THREADS {ATT_THREADS}\n#define ATT_GROUP_MAX {ATT_GROUP_MAX}\n#define AD_WARPS {AD_WARPS}\n#define AD_CHUNKS {AD_CHUNKS}\n#define BT_ROWS {rows}\n#define BT_WARPS {warps}\n#define BT_PAD {pad}\n\
         #define TL_ROWS {tl_rows}\n#define TL_TOKENS {tl_tokens}\n#define TL_PAD {tl_pad}\n\
         #define MM_ROWS {mm_rows}\n#define MM_WARPS {mm_warps}\n#define MM_TOKENS {mm_tokens}\n#define MM_PAD {mm_pad}\n#define MM_TILES {mm_tiles}\n\
         #define QKV_MIXED_PAIRS(X){qkv_mixed}\n\
         {COMMON_CUH}\n#line 1 \"{name}\"\n{body}\n"
    )
}

/// What names one compiled image: SHA-256 (hex) of the compiler's identity
/// ([`nvrtc_identity`]), the architecture, the options and the translation
/// unit. The on-disk cache files are named by it, and every image built
/// into the binary carries it.
pub fn image_key(compiler: &str, arch: &str, unit: &str) -> String {
    let mut k = format!("{compiler}\narch {arch}\n");
    for o in NVRTC_OPTIONS {
        k.push_str(o);
        k.push('\n');
    }
    k.push_str(unit);
    hex(&Sha256::digest(k.as_bytes()))
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 (hex) of a CUBIN, as recorded beside every built-in image.
pub fn cubin_sha256(cubin: &[u8]) -> String {
    hex(&Sha256::digest(cubin))
}

/// Whether the NVRTC library can be opened (checked before any NVRTC call,
/// since cudarc panics on a missing library).
pub fn nvrtc_loadable() -> bool {
    // SAFETY: only tries to dlopen the library by its candidate names; no symbol is called.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// NVRTC's (major, minor) version. The caller has checked [`nvrtc_loadable`].
pub fn nvrtc_version_raw() -> Result<(i32, i32), String> {
    let (mut major, mut minor) = (0i32, 0i32);
    // SAFETY: the library is present (the caller checked); both out-pointers are valid locals.
    let rc = unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) };
    rc.result()
        .map_err(|e| format!("nvrtcVersion failed: {e:?}"))?;
    Ok((major, minor))
}

/// The NVRTC library as the numerics version and the image keys name it:
/// its version and the size of the file it was loaded from (NVRTC reports
/// only major.minor; the size tells patch releases apart), e.g. "nvrtc 13.0
/// (a 109338064-byte library)". Not the file's name: one NVRTC release is
/// `libnvrtc.so.13` in the Python wheel and `libnvrtc.so.13.0.88` in the
/// CUDA toolkit, and where it is installed changes nothing it compiles.
/// Call after NVRTC has been loaded.
pub fn nvrtc_identity(version: (i32, i32)) -> String {
    let lib = loaded_nvrtc_path()
        .and_then(|p| std::fs::metadata(p).ok())
        .map(|m| format!(" (a {}-byte library)", m.len()))
        .unwrap_or_default();
    format!("nvrtc {}.{}{lib}", version.0, version.1)
}

/// The file this process loaded the NVRTC library from (`libnvrtc.*`, not
/// its builtins), read from /proc/self/maps; None before it is loaded.
pub fn loaded_nvrtc_path() -> Option<String> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| {
            p.rsplit('/')
                .next()
                .is_some_and(|f| f.starts_with("libnvrtc."))
        })
        .map(str::to_string)
}

/// The SM number a CUBIN was compiled for (90 for sm_90), read from its ELF
/// header's flags; None when it is not a 64-bit ELF file.
pub fn cubin_sm(cubin: &[u8]) -> Option<u32> {
    if cubin.len() < 0x34 || &cubin[..4] != b"\x7fELF" || cubin[4] != 2 {
        return None;
    }
    let flags = u32::from_le_bytes(cubin[0x30..0x34].try_into().ok()?);
    Some((flags >> 8) & 0xff)
}

/// The SM number of an architecture name: 90 for "sm_90" (and "sm_90a");
/// None when it is not `sm_` followed by two or three digits and an
/// optional letter.
pub fn arch_sm(arch: &str) -> Option<u32> {
    let rest = arch.strip_prefix("sm_")?;
    let digits = rest.trim_end_matches(|c: char| c.is_ascii_lowercase());
    let suffix = rest.len() - digits.len();
    if !(2..=3).contains(&digits.len()) || suffix > 1 || !digits.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    digits.parse().ok()
}

/// The SM numbers this NVRTC compiles for (e.g. 75, 80, ... 120). The
/// caller has checked [`nvrtc_loadable`].
pub fn nvrtc_supported_sms() -> Result<Vec<u32>, String> {
    let mut n: std::ffi::c_int = 0;
    // SAFETY: the library is present (the caller checked); `n` is a valid out-pointer.
    unsafe { cudarc::nvrtc::sys::nvrtcGetNumSupportedArchs(&mut n) }
        .result()
        .map_err(|e| format!("nvrtcGetNumSupportedArchs failed: {e:?}"))?;
    if !(0..=256).contains(&n) {
        return Err(format!("NVRTC reports {n} supported architectures"));
    }
    let mut archs: Vec<std::ffi::c_int> = vec![0; n as usize];
    if !archs.is_empty() {
        // SAFETY: `archs` holds exactly the number of entries NVRTC just reported, which it fills.
        unsafe { cudarc::nvrtc::sys::nvrtcGetSupportedArchs(archs.as_mut_ptr()) }
            .result()
            .map_err(|e| format!("nvrtcGetSupportedArchs failed: {e:?}"))?;
    }
    Ok(archs.into_iter().map(|a| a.max(0) as u32).collect())
}

/// Compile one translation unit to CUBIN for `arch` (e.g. "sm_90"). A
/// compile error carries NVRTC's log with the file name. The caller has
/// checked [`nvrtc_loadable`].
pub fn compile_unit(name: &str, unit: &str, arch: &str) -> Result<Vec<u8>, String> {
    use cudarc::nvrtc::{result, sys};
    let src = CString::new(unit).map_err(|_| format!("kernel {name} contains a NUL byte"))?;
    let cname = CString::new(name).map_err(|_| "kernel name contains a NUL byte".to_string())?;
    let prog = result::create_program(&src, Some(&cname))
        .map_err(|e| format!("NVRTC could not create program {name}: {e:?}"))?;
    let mut opts: Vec<String> = NVRTC_OPTIONS.iter().map(|s| s.to_string()).collect();
    opts.push(format!("--gpu-architecture={arch}"));
    // SAFETY: `prog` was just created and is destroyed exactly once below;
    // `src`/`cname` outlive it. Options are owned strings.
    let compiled = unsafe { result::compile_program(prog, &opts) };
    let out = match compiled {
        Ok(()) => {
            let mut size = 0usize;
            // SAFETY: `prog` compiled successfully; `size` is a valid out-pointer.
            let rc = unsafe { sys::nvrtcGetCUBINSize(prog, &mut size) };
            match rc.result() {
                Ok(()) if size > 0 => {
                    let mut buf = vec![0u8; size];
                    // SAFETY: `buf` holds exactly the `size` bytes NVRTC reported.
                    let rc = unsafe { sys::nvrtcGetCUBIN(prog, buf.as_mut_ptr() as *mut _) };
                    rc.result()
                        .map(|_| buf)
                        .map_err(|e| format!("nvrtcGetCUBIN for {name}: {e:?}"))
                }
                Ok(()) => Err(format!("NVRTC produced an empty CUBIN for {name} ({arch})")),
                Err(e) => Err(format!("nvrtcGetCUBINSize for {name}: {e:?}")),
            }
        }
        Err(e) => {
            // SAFETY: `prog` is live; the log is copied into the returned Vec.
            let log = unsafe { result::get_program_log(prog) }
                .ok()
                .map(|v| {
                    // SAFETY: NVRTC's log is NUL-terminated within the returned buffer.
                    unsafe { CStr::from_ptr(v.as_ptr()) }
                        .to_string_lossy()
                        .into_owned()
                })
                .unwrap_or_default();
            Err(format!(
                "NVRTC failed to compile {name} for {arch}: {e:?}\n{log}"
            ))
        }
    };
    // SAFETY: destroys the program created above, once.
    let _ = unsafe { result::destroy_program(prog) };
    out
}

/// Marks the end of a cache entry, before the CUBIN's SHA-256.
const ENTRY_MAGIC: &[u8; 8] = b"WOKCUBN1";
/// Bytes after the CUBIN in a cache entry.
pub const ENTRY_TRAILER: usize = ENTRY_MAGIC.len() + 32;

/// What a cache file holds.
#[derive(Debug, PartialEq, Eq)]
pub enum CacheEntry {
    Missing,
    /// A CUBIN whose SHA-256 matches the one stored after it.
    Valid(Vec<u8>),
    /// Present but not a whole entry: says why.
    Corrupt(String),
}

/// Read one cache entry: CUBIN bytes, then [`ENTRY_MAGIC`] and their SHA-256.
pub fn read_cache_entry(path: &std::path::Path) -> CacheEntry {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return CacheEntry::Missing,
        Err(e) => return CacheEntry::Corrupt(format!("it cannot be read: {e}")),
    };
    if bytes.len() <= ENTRY_TRAILER {
        return CacheEntry::Corrupt(format!("{} bytes is too short to be an entry", bytes.len()));
    }
    let (cubin, trailer) = bytes.split_at(bytes.len() - ENTRY_TRAILER);
    if &trailer[..ENTRY_MAGIC.len()] != ENTRY_MAGIC {
        return CacheEntry::Corrupt(
            "it does not end with the entry marker: truncated, or written by another version"
                .into(),
        );
    }
    if Sha256::digest(cubin)[..] != trailer[ENTRY_MAGIC.len()..] {
        return CacheEntry::Corrupt("its SHA-256 does not match its contents".into());
    }
    CacheEntry::Valid(cubin.to_vec())
}

/// Write one cache entry atomically (a temporary file renamed over it). A
/// cache that cannot be written only costs a recompile next time.
pub fn write_cache_entry(path: &std::path::Path, cubin: &[u8]) {
    let Some(dir) = path.parent() else { return };
    if std::fs::create_dir_all(dir).is_err() {
        return;
    }
    let mut entry = Vec::with_capacity(cubin.len() + ENTRY_TRAILER);
    entry.extend_from_slice(cubin);
    entry.extend_from_slice(ENTRY_MAGIC);
    entry.extend_from_slice(&Sha256::digest(cubin));
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    if std::fs::write(&tmp, &entry).is_ok() {
        let _ = std::fs::rename(&tmp, path);
    }
}

/// The cache file of one image in `dir`: `<stem>-<arch>-<key prefix>.cubin`.
pub fn cache_entry_path(
    dir: &std::path::Path,
    name: &str,
    arch: &str,
    key: &str,
) -> std::path::PathBuf {
    let stem = name.trim_end_matches(".cu");
    dir.join(format!("{stem}-{arch}-{}.cubin", &key[..32]))
}
