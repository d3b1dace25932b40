//! `docs/protocol.md` and the code agree: every error code is in the
//! error table with its number, name and the fatal flag `is_fatal` gives.

use wire_format::{ErrorCode, is_fatal};

/// The rows of the error table: (code, name, fatal column).
fn error_table() -> Vec<(u16, String, String)> {
    let doc = include_str!("../../docs/protocol.md");
    let start = doc.find("## 5. Error codes").expect("the error section");
    doc[start..]
        .lines()
        .filter_map(|line| {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let code = cells.get(1)?.parse().ok()?;
            Some((code, cells.get(2)?.to_string(), cells.get(3)?.to_string()))
        })
        .collect()
}

#[test]
fn every_error_code_is_documented_with_its_fatal_flag() {
    let table = error_table();
    for code in ErrorCode::ENUM_VALUES.iter().filter(|c| c.0 != 0) {
        let name = code.variant_name().expect("named");
        let row = table.iter().find(|(n, _, _)| *n == code.0);
        let Some((_, doc_name, fatal)) = row else {
            panic!(
                "{name} ({}) is missing from protocol.md's error table",
                code.0
            );
        };
        assert_eq!(doc_name, name, "code {}", code.0);
        let documented = fatal.starts_with("yes");
        assert_eq!(
            documented,
            is_fatal(*code),
            "{name}: protocol.md says fatal {fatal:?}, the code says {}",
            is_fatal(*code)
        );
    }
    assert_eq!(table.len(), ErrorCode::ENUM_VALUES.len(), "no stale rows");
}
