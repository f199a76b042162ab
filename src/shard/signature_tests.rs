//! Unit tests of the model-signature checks (WORKER-4222, 4313): the key and
//! signature file forms, the strict verification, the policy and its codes,
//! and interoperability with the OpenSSL recipe of docs/operations.md.

use super::*;
use ed25519_dalek::{Signer, SigningKey};
use sha2::{Digest, Sha256};

/// Made with the recipe of docs/operations.md (OpenSSL 3.0):
/// `openssl genpkey -algorithm ed25519`, `openssl pkey -pubout`, and
/// `sha256sum m.gguf | cut -d' ' -f1 | xxd -r -p | openssl pkeyutl -sign
/// -inkey key.pem -rawin -in /dev/stdin | xxd -p -c 64` over the 11-byte
/// file "hello model".
const OPENSSL_PEM: &str = "-----BEGIN PUBLIC KEY-----\n\
    MCowBQYDK2VwAyEAfKMDomQuIJQgdd3QnurA1kBlvkqMyy4emRCZZOHkcQ0=\n\
    -----END PUBLIC KEY-----\n";
const OPENSSL_PUB_HEX: &str = "7ca303a2642e20942075ddd09eeac0d64065be4a8ccb2e1e99109964e1e4710d";
const OPENSSL_SIG_HEX: &str = "4653b9763d568f989b96bd29d172e71b8919053c53a9e1d98748467de52b2299\
                               91a37263033d22442f9fb7995ebc4387ea1d650a64cc727c0c7b8630ba61c60b\n";
const OPENSSL_MESSAGE: &[u8] = b"hello model";

fn signer() -> SigningKey {
    SigningKey::from_bytes(&[7; 32])
}

fn trusted(k: &SigningKey) -> TrustedKey {
    TrustedKey(k.verifying_key())
}

fn sha(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

fn signing(k: Option<&SigningKey>) -> ModelSigning {
    ModelSigning {
        key: k.map(trusted),
        startup_signature: None,
    }
}

#[test]
fn the_openssl_recipe_interoperates() {
    let from_pem = parse_public_key(OPENSSL_PEM.as_bytes()).expect("PEM key");
    let from_hex = parse_public_key(format!("  {OPENSSL_PUB_HEX}\n").as_bytes()).expect("hex key");
    assert_eq!(from_pem, from_hex);
    let sig = parse_signature(OPENSSL_SIG_HEX.as_bytes()).expect("hex signature");
    let digest = sha(OPENSSL_MESSAGE);
    assert!(verify(&TrustedKey(from_pem), &digest, &sig));
    // Over the digest, not the file: the same signature does not verify the raw bytes.
    assert!(from_hex
        .verify_strict(OPENSSL_MESSAGE, &Signature::from_bytes(&sig))
        .is_err());
}

#[test]
fn keys_are_read_as_hex_raw_or_pem() {
    let k = signer().verifying_key();
    assert_eq!(parse_public_key(k.as_bytes()).unwrap(), k);
    let hex_upper = hex::encode_upper(k.as_bytes());
    assert_eq!(
        parse_public_key(format!("\n{hex_upper}\r\n").as_bytes()).unwrap(),
        k
    );
}

#[test]
fn malformed_keys_are_refused_with_the_reason() {
    let k = hex::encode(signer().verifying_key().as_bytes());
    let short = parse_public_key(&k.as_bytes()[..62]).unwrap_err();
    assert!(short.contains("64 hex digits"), "{short}");
    let not_hex = parse_public_key(format!("{}zz", &k[..62]).as_bytes()).unwrap_err();
    assert!(not_hex.contains("not hexadecimal"), "{not_hex}");
    let raw31 = parse_public_key(&[9u8; 31]).unwrap_err();
    assert!(raw31.contains("32 raw bytes"), "{raw31}");
    let binary = parse_public_key(&[0xffu8; 40]).unwrap_err();
    assert!(binary.contains("neither"), "{binary}");
    let pem = OPENSSL_PEM.replace("MCow", "MCox");
    assert!(parse_public_key(pem.as_bytes())
        .unwrap_err()
        .contains("PEM"));
}

#[test]
fn keys_off_the_curve_and_weak_keys_are_refused() {
    // About half of all y coordinates have no point; find one deterministically.
    let off_curve = (0u8..=255)
        .map(|i| {
            let mut b = [0u8; 32];
            b[0] = i;
            b[1] = 0x5a;
            b
        })
        .find(|b| VerifyingKey::from_bytes(b).is_err())
        .expect("some y has no point");
    let e = parse_public_key(&off_curve).unwrap_err();
    assert!(e.contains("not a point"), "{e}");
    // y = 1 is the identity, a small-order point.
    let mut identity = [0u8; 32];
    identity[0] = 1;
    let e = parse_public_key(hex::encode(identity).as_bytes()).unwrap_err();
    assert!(e.contains("weak"), "{e}");
}

#[test]
fn signatures_are_read_as_hex_or_raw_and_nothing_else() {
    let sig = signer().sign(&sha(b"m")).to_bytes();
    assert_eq!(parse_signature(&sig).unwrap(), sig);
    assert_eq!(
        parse_signature(format!("{}\n", hex::encode(sig)).as_bytes()).unwrap(),
        sig
    );
    assert!(parse_signature(&sig[..63])
        .unwrap_err()
        .contains("128 hex digits"));
    assert!(parse_signature(hex::encode(&sig[..63]).as_bytes()).is_err());
    let mut bad = hex::encode(sig);
    bad.replace_range(0..1, "g");
    assert!(parse_signature(bad.as_bytes())
        .unwrap_err()
        .contains("not hexadecimal"));
}

#[test]
fn verification_is_strict_about_key_digest_and_every_bit() {
    let k = signer();
    let digest = sha(b"model bytes");
    let sig = k.sign(&digest).to_bytes();
    assert!(verify(&trusted(&k), &digest, &sig));
    for bit in [0, 7, 255, 511] {
        let mut flipped = sig;
        flipped[bit / 8] ^= 1 << (bit % 8);
        assert!(!verify(&trusted(&k), &digest, &flipped), "bit {bit}");
    }
    let other = SigningKey::from_bytes(&[8; 32]);
    assert!(!verify(&trusted(&other), &digest, &sig), "another key");
    assert!(
        !verify(&trusted(&k), &sha(b"other bytes"), &sig),
        "another digest"
    );
    assert!(
        !verify(&trusted(&k), &digest, &sig[..63]),
        "short signature"
    );
}

#[test]
fn the_policy_refuses_missing_bad_and_unverifiable_signatures() {
    let k = signer();
    let digest = sha(b"model");
    let good = k.sign(&digest).to_bytes();
    let with_key = signing(Some(&k));
    assert!(with_key
        .verify_commit(Some(&good), "m.gguf", || Ok(digest))
        .is_ok());
    let mut bad = good;
    bad[3] ^= 0x10;
    for (sig, says) in [
        (None, "has no signature"),
        (Some(&bad[..]), "does not verify"),
    ] {
        let e = with_key
            .verify_commit(sig, "m.gguf", || Ok(digest))
            .unwrap_err();
        assert_eq!(e.code(), "MODEL_SIGNATURE_INVALID");
        assert!(e.message().contains(says), "{}", e.message());
        assert!(
            e.message().contains("model_signing_pubkey_file"),
            "{}",
            e.message()
        );
    }
    let no_key = signing(None);
    assert!(no_key.verify_commit(None, "m.gguf", || Ok(digest)).is_ok());
    let e = no_key
        .verify_commit(Some(&good), "m.gguf", || Ok(digest))
        .unwrap_err();
    assert_eq!(e.code(), "MODEL_SIGNATURE_INVALID");
    assert!(
        e.message().contains("cannot be verified"),
        "{}",
        e.message()
    );
}

#[test]
fn the_digest_is_computed_only_when_it_is_checked() {
    let k = signer();
    let never = || -> Result<[u8; 32]> { panic!("the file must not be hashed") };
    assert!(signing(None).verify_commit(None, "m", never).is_ok());
    assert!(signing(None)
        .verify_commit(Some(&[0; 64]), "m", never)
        .is_err());
    assert!(signing(Some(&k)).verify_commit(None, "m", never).is_err());
}

#[test]
fn the_startup_signature_is_checked_and_named() {
    let k = signer();
    let digest = sha(b"start-up model");
    let mut s = ModelSigning {
        key: Some(trusted(&k)),
        startup_signature: Some(k.sign(&digest).to_bytes()),
    };
    assert!(s.verify_startup(&digest, "tiny.gguf").is_ok());
    let e = s
        .verify_startup(&sha(b"replaced"), "tiny.gguf")
        .unwrap_err();
    assert_eq!(e.code(), "MODEL_SIGNATURE_INVALID");
    assert!(
        e.message().contains("model_signature_file"),
        "{}",
        e.message()
    );
    s.startup_signature = None;
    assert!(s.verify_startup(&digest, "tiny.gguf").is_err());
}

#[test]
fn files_are_bounded_and_hashed_like_sha256sum() {
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.pub");
    std::fs::write(&big, vec![b'a'; MAX_FILE_BYTES as usize + 1]).unwrap();
    assert!(read_bounded(&big).unwrap_err().contains("larger than"));
    assert!(read_bounded(dir.path()).is_err(), "a directory");
    assert!(read_bounded(&dir.path().join("missing"))
        .unwrap_err()
        .contains("cannot be read"));
    let m = dir.path().join("m.gguf");
    std::fs::write(&m, OPENSSL_MESSAGE).unwrap();
    assert_eq!(file_sha256(&m, 11).unwrap(), sha(OPENSSL_MESSAGE));
    assert_eq!(file_sha256(&m, 10).unwrap_err().code(), "MODEL_LOAD_FAILED");
}

#[test]
fn load_reads_both_files_and_names_the_field_at_fault() {
    let dir = tempfile::tempdir().unwrap();
    let k = signer();
    let key = dir.path().join("signing.pub");
    let sig = dir.path().join("tiny.gguf.sig");
    std::fs::write(&key, hex::encode(k.verifying_key().as_bytes())).unwrap();
    std::fs::write(&sig, hex::encode(k.sign(&sha(b"x")).to_bytes())).unwrap();
    let cfg = |extra: &str| {
        crate::config::Config::from_json_str(&format!(
            r#"{{"worker_id":"w","pool_id":"p","model_path":"/m/x.gguf","rpc_port":8001,"gpu_device":0,
                "readiness_callback_url":"http://127.0.0.1:9/cb"{extra}}}"#
        ))
        .unwrap()
    };
    let both = format!(
        r#","model_signing_pubkey_file":{:?},"model_signature_file":{:?}"#,
        key.display().to_string(),
        sig.display().to_string()
    );
    let s = ModelSigning::load(&cfg(&both)).unwrap();
    assert_eq!(s.key, Some(trusted(&k)));
    assert!(s.startup_signature.is_some());
    assert_eq!(
        ModelSigning::load(&cfg("")).unwrap(),
        ModelSigning::default()
    );

    std::fs::write(&key, "not a key").unwrap();
    let e = ModelSigning::load(&cfg(&both)).unwrap_err();
    assert_eq!(e.field, "model_signing_pubkey_file");
    assert!(
        e.message.contains("accepted: 64 hexadecimal digits"),
        "{}",
        e.message
    );
    std::fs::write(&key, hex::encode(k.verifying_key().as_bytes())).unwrap();
    std::fs::write(&sig, "abcd").unwrap();
    let e = ModelSigning::load(&cfg(&both)).unwrap_err();
    assert_eq!(e.field, "model_signature_file");
    assert!(
        e.message.contains("128 hexadecimal digits"),
        "{}",
        e.message
    );
}

#[test]
fn a_trusted_key_shows_itself_as_hex() {
    let key = TrustedKey(parse_public_key(OPENSSL_PEM.as_bytes()).unwrap());
    assert_eq!(key.hex(), OPENSSL_PUB_HEX);
    assert_eq!(format!("{key:?}"), format!("TrustedKey({OPENSSL_PUB_HEX})"));
}

#[test]
fn key_and_signature_files_are_read_up_to_their_limit_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let at = dir.path().join("at-limit");
    std::fs::write(&at, vec![b'a'; MAX_FILE_BYTES as usize]).unwrap();
    assert_eq!(read_bounded(&at).unwrap().len() as u64, MAX_FILE_BYTES);
    let past = dir.path().join("past-limit");
    std::fs::write(&past, vec![b'a'; MAX_FILE_BYTES as usize + 1]).unwrap();
    let e = read_bounded(&past).unwrap_err();
    assert!(e.contains("larger than 4096 bytes"), "{e}");
    assert_eq!(
        read_bounded(dir.path()).unwrap_err(),
        "is not a regular file"
    );
}
