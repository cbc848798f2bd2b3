//! The migration runner: applies each file once, and refuses an edited applied file.

use refinery::Migration;
use surge::store::migrate;

use crate::common::TestDb;

/// The migration files as they are on disk, optionally with V1 edited.
fn from_disk(edit_v1: bool) -> Vec<Migration> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("migrations dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "sql"))
        .collect();
    files.sort();
    files
        .iter()
        .map(|path| {
            let name = path
                .file_stem()
                .expect("stem")
                .to_string_lossy()
                .to_string();
            let mut sql = std::fs::read_to_string(path).expect("read sql");
            if edit_v1 && name.starts_with("V1__") {
                sql.push_str("\n-- an edit after the fact\n");
            }
            Migration::unapplied(&name, &sql).expect("valid migration name")
        })
        .collect()
}

#[actix_web::test]
async fn migrations_apply_once_and_refuse_edits() {
    let db = TestDb::create().await;
    let mut client = db.client().await;
    let first = migrate::run(&mut client).await.expect("first run");
    assert_eq!(first.applied_migrations().len(), from_disk(false).len());
    let second = migrate::run(&mut client).await.expect("second run");
    assert_eq!(
        second.applied_migrations().len(),
        0,
        "nothing applied twice"
    );
    assert!(migrate::is_current(&client).await.expect("is_current"));

    // The files on disk, unedited, are what was applied.
    let same = migrate::run_set(&mut client, &from_disk(false))
        .await
        .expect("unedited");
    assert_eq!(same.applied_migrations().len(), 0);

    let err = migrate::run_set(&mut client, &from_disk(true))
        .await
        .expect_err("an edited applied migration must be refused");
    let text = format!("{err:#}");
    assert!(text.contains("divergent") || text.contains("V1"), "{text}");

    // Partitions for this month and three ahead, for both tables.
    let parts: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_inherits i JOIN pg_class p ON p.oid = i.inhparent
              WHERE p.relname IN ('orders', 'order_lines')",
            &[],
        )
        .await
        .expect("count partitions")
        .get(0);
    assert_eq!(parts, 8);
    assert_eq!(
        migrate::ensure_partitions(&client).await.expect("again"),
        0,
        "idempotent"
    );
}

#[actix_web::test]
async fn schema_refuses_a_broken_stock_row() {
    let db = TestDb::create().await;
    let mut client = db.client().await;
    migrate::run(&mut client).await.expect("migrate");
    client
        .batch_execute(
            "INSERT INTO products (slug, name) VALUES ('p', 'P');
             INSERT INTO variants (sku, product_id, price_minor, currency)
                  SELECT 'S1', id, 100, 'EUR' FROM products;
             INSERT INTO inventory (sku, total, available) VALUES ('S1', 10, 10);",
        )
        .await
        .expect("valid rows");
    for bad in [
        "UPDATE inventory SET available = available - 1",
        "UPDATE inventory SET available = -1, total = -1",
        "UPDATE inventory SET available = 9, leased = 2",
    ] {
        let result = client.batch_execute(bad).await;
        assert!(result.is_err(), "{bad} must be refused");
    }
    let row = client
        .query_one(
            "SELECT total, available FROM inventory WHERE sku = 'S1'",
            &[],
        )
        .await
        .expect("row");
    assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1)), (10, 10));
}
