use super::*;

#[test]
fn part_sizes_grow_so_large_dumps_fit() {
    let base = 8 * 1024 * 1024;
    assert_eq!(part_size(base, 1), base);
    assert_eq!(part_size(base, 1000), base);
    assert_eq!(part_size(base, 1001), 2 * base);
    assert_eq!(part_size(1, 1), MIN_PART);
    let total: u128 = (1..=MAX_PARTS).map(|n| part_size(base, n) as u128).sum();
    assert!(
        total > 5 * (1u128 << 40),
        "10,000 parts hold only {total} bytes"
    );
    assert!(part_size(base, MAX_PARTS) <= MAX_PART);
}

#[test]
fn debug_output_hides_the_secret_key() {
    let mut s = S3Settings::new("b", "r");
    s.credentials = Some((
        "AKIDEXAMPLE".into(),
        SecretString::from("CANARY-secret-key"),
    ));
    assert!(!format!("{s:?}").contains("CANARY"));
}

#[test]
fn tags_are_url_encoded() {
    let tags = vec![
        ("strata-job".into(), "prod db".into()),
        ("a&b".into(), "c=d".into()),
        ("team~1".into(), "Zürich/ops+".into()),
    ];
    assert_eq!(
        tagging(&tags).unwrap(),
        "strata-job=prod%20db&a%26b=c%3Dd&team~1=Z%C3%BCrich%2Fops%2B"
    );
    assert_eq!(tagging(&[]), None);
}
