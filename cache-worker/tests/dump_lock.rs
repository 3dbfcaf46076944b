//! One running worker per dump file (issue #12, item 8), and a start that cannot make the dump
//! file's folder (item 4; `dump_writes.rs` has the folder made). Across processes, `crash.rs`
//! shows the lock refusing a second process while the first runs and being released by the OS
//! when the first is killed.

mod common;

use cache_worker::Error;

use common::{Upstream, key, started_on, temp_dump};

#[tokio::test]
async fn a_second_running_worker_on_one_dump_file_is_refused() {
    let (_dir, file) = temp_dump("shared.dump");
    let first = started_on(&Upstream::new(), "first", &file).await;
    first.insert(key("a"), 1);

    let refused = common::dumping(&Upstream::new(), "second", &file)
        .start()
        .await
        .expect_err("a second worker on the same file");
    let Error::DumpInUse { path, lock } = &refused else {
        panic!("{refused:?}");
    };
    assert_eq!(path, &file);
    assert!(lock.starts_with(file.parent().expect("folder")));
    let message = refused.to_string();
    assert!(
        message.contains("in use by another running worker") && message.contains("shared.dump"),
        "{message}"
    );

    // The first one is untouched, and its final dump is the file's.
    first.shutdown().await.expect("shutdown");
    let next = started_on(&Upstream::new(), "first", &file).await;
    assert!(next.started().is_warm());
    assert_eq!(next.peek("a").as_deref(), Some(&1));
    next.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn dropping_the_last_handle_releases_the_dump_file() {
    let (_dir, file) = temp_dump("dropped.dump");
    let first = started_on(&Upstream::new(), "dropped", &file).await;
    let second_handle = first.clone();
    drop(first);
    assert!(matches!(
        common::dumping(&Upstream::new(), "dropped", &file)
            .start()
            .await,
        Err(Error::DumpInUse { .. })
    ));
    drop(second_handle);
    let again = started_on(&Upstream::new(), "dropped", &file).await;
    again.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn a_folder_that_cannot_be_made_fails_the_start() {
    let (dir, _) = temp_dump("unused");
    let blocker = dir.path().join("a-file");
    std::fs::write(&blocker, b"not a folder").expect("write");
    let file = blocker.join("there.dump");
    let error = common::dumping(&Upstream::new(), "blocked", &file)
        .start()
        .await
        .expect_err("the folder is a file");
    let Error::DumpFile { path, source } = &error else {
        panic!("{error:?}");
    };
    assert_eq!(path, &file);
    assert!(
        error.to_string().contains("there.dump"),
        "{error}: {source}"
    );
}
