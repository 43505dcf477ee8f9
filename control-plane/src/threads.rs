//! The API's threads: each runs a single-threaded runtime with its own
//! accept loop on the one listening socket, and keeps each connection it
//! accepts, with every stream of that connection, to itself.
//!
//! Why not one multi-threaded runtime: a push wakes every held poll of a
//! connection at once. On one thread, all the woken streams answer before
//! the connection's task runs again, and it writes their answers together.
//! Tokio's multi-threaded scheduler runs a task that another task woke
//! right after it (its LIFO slot), so there the connection would write
//! after each stream's answer: ten writes instead of one to a proxy that
//! watches ten services, and the cost of a push is mostly those writes.

use std::future::Future;
use std::io;
use std::num::NonZeroUsize;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// Starts `serve` on `threads - 1` new threads, each given its own handle
/// on `listener`, and returns the future of the first, which is the
/// caller's. It resolves when every thread's `serve` has returned.
pub fn serve_on_threads<F, Fut>(
    threads: NonZeroUsize,
    listener: TcpListener,
    serve: F,
) -> io::Result<impl Future<Output = ()> + Send>
where
    F: Fn(TcpListener) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let serve = Arc::new(serve);
    let listener = listener.into_std()?;
    let mut finished = Vec::with_capacity(threads.get() - 1);
    for n in 1..threads.get() {
        let own = listener.try_clone()?;
        let serve = serve.clone();
        let (done, finished_rx) = oneshot::channel();
        std::thread::Builder::new()
            .name(format!("api-{n}"))
            .spawn(move || {
                run_thread(own, &*serve);
                let _ = done.send(());
            })?;
        finished.push(finished_rx);
    }
    let first = serve(TcpListener::from_std(listener)?);
    Ok(async move {
        first.await;
        for thread in finished {
            // An error means the thread ended without saying so: it logged why.
            let _ = thread.await;
        }
    })
}

fn run_thread<F, Fut>(listener: std::net::TcpListener, serve: &F)
where
    F: Fn(TcpListener) -> Fut,
    Fut: Future<Output = ()>,
{
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "cannot start an API thread; the others serve without it");
            return;
        }
    };
    runtime.block_on(async {
        // The socket must be registered with this thread's own reactor.
        match TcpListener::from_std(listener) {
            Ok(listener) => serve(listener).await,
            Err(e) => {
                tracing::error!(error = %e, "an API thread cannot listen; the others serve without it");
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::sync::Mutex;
    use std::time::Duration;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn every_thread_accepts_on_the_one_socket() {
        const THREADS: usize = 3;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<HashSet<String>>> = Arc::default();
        let served = {
            let seen = seen.clone();
            tokio::spawn(
                serve_on_threads(
                    NonZeroUsize::new(THREADS).unwrap(),
                    listener,
                    move |listener| {
                        let seen = seen.clone();
                        async move {
                            // Each thread takes one connection, notes who it is, and ends.
                            let (mut stream, _) = listener.accept().await.unwrap();
                            let name = std::thread::current().name().unwrap_or("").to_string();
                            seen.lock().unwrap().insert(name);
                            stream.write_all(b"ok").await.unwrap();
                        }
                    },
                )
                .unwrap(),
            )
        };
        let mut clients = Vec::new();
        for _ in 0..THREADS {
            clients.push(tokio::net::TcpStream::connect(addr).await.unwrap());
        }
        tokio::time::timeout(Duration::from_secs(10), served)
            .await
            .expect("every thread took a connection and returned")
            .unwrap();
        assert_eq!(seen.lock().unwrap().len(), THREADS, "{seen:?}");
    }
}
