//! `gateway token keygen` and `gateway token issue`, run as a user would:
//! the key file is private, and the issued token verifies with the printed
//! verifying key and says what was asked.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use gateway::token::Verifier;

fn run(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(args)
        .output()
        .unwrap()
}

fn gateway(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn keygen_then_issue_makes_a_token_the_gateway_accepts() {
    let dir = std::env::temp_dir().join(format!("gateway-token-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let keygen = [
        "token",
        "keygen",
        "--key-id",
        "7",
        "--out",
        dir.to_str().unwrap(),
    ];
    let printed = gateway(&keygen);
    let (id, public_hex) = printed.split_once(':').unwrap();
    assert_eq!(id, "7");
    let key_file = dir.join("token-signing-key-7.pk8");
    let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the signing key is private");

    let key = key_file.to_str().unwrap();
    let args = [
        "token", "issue", "--key", key, "--key-id", "7", "--user", "42", "--device", "2", "--ttl",
        "1h",
    ];
    let token = hex::decode(gateway(&args)).unwrap();
    let public: [u8; 32] = hex::decode(public_hex).unwrap().try_into().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = Verifier::new([(7, public)]).verify(&token, now).unwrap();
    assert_eq!((claims.user, claims.device), (42, 2));
    assert!(
        (now + 3590..=now + 3610).contains(&claims.expires_s),
        "valid for an hour"
    );

    let again = run(&keygen);
    assert!(
        !again.status.success(),
        "an existing key is never overwritten"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
