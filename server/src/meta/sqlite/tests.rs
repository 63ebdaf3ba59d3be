//! The SQLite MetaStore: the contract on a file and in memory, data surviving a reopen, and an
//! older database migrated on open.

use super::*;

#[tokio::test]
async fn contract_in_memory() {
    let store = SqliteMetaStore::in_memory().await.unwrap();
    contract::run(&store).await;
}

/// A database written before node records could be bound to leases gets the column on
/// open and keeps its nodes.
#[tokio::test]
async fn an_older_database_gains_the_lease_column() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("meta.db");
    {
        let opts = SqliteConnectOptions::new().filename(&path).create_if_missing(true);
        let pool = SqlitePoolOptions::new().connect_with(opts).await.unwrap();
        sqlx::query(
            "CREATE TABLE nodes (id INTEGER PRIMARY KEY, host TEXT NOT NULL, port INTEGER NOT NULL,
             state TEXT NOT NULL, updated_ms INTEGER NOT NULL)",
        )
        .execute(&pool)
        .await
        .unwrap();
        sqlx::query("INSERT INTO nodes VALUES (3, 'h', 6570, 'Dead', 5)")
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;
    }
    let store = SqliteMetaStore::open(&path).await.unwrap();
    assert_eq!(store.list_nodes().await.unwrap()[0].id, 3);
    let lease = store.grant_lease(std::time::Duration::from_secs(30)).await.unwrap();
    let n = NodeMeta {
        id: 4,
        host: "h".into(),
        port: 1,
        state: "Running".into(),
        updated_ms: 6,
    };
    store.upsert_node(&n, Some(lease)).await.unwrap();
    store.revoke_lease(lease).await.unwrap();
    assert_eq!(store.list_nodes().await.unwrap().len(), 1);
    store.close().await;
}

#[tokio::test]
async fn contract_on_file_and_data_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("meta.db");
    {
        let store = SqliteMetaStore::open(&path).await.unwrap();
        contract::run(&store).await;
        contract::seed_durable(&store).await;
        store.close().await;
    }
    let store = SqliteMetaStore::open(&path).await.unwrap();
    contract::check_durable(&store).await;
    store.close().await;
}
