//! Holding one call of a test's loader once it has read upstream, until the test releases it:
//! the way a test pins an interleaving ("the reload has read 100 and waits").

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Arc;

use parking_lot::Mutex;

/// One held call: it says when it has read upstream, then waits until the test releases it.
pub struct Gate {
    entered: tokio::sync::Semaphore,
    release: tokio::sync::Semaphore,
}

impl Default for Gate {
    fn default() -> Self {
        Gate {
            entered: tokio::sync::Semaphore::new(0),
            release: tokio::sync::Semaphore::new(0),
        }
    }
}

impl Gate {
    async fn pass(&self) {
        self.entered.add_permits(1);
        if let Ok(permit) = self.release.acquire().await {
            permit.forget();
        }
    }
}

/// The test's side of a held call (see [`Holds::hold`]).
pub struct Hold(Arc<Gate>);

impl Hold {
    /// Waits until the held call has read upstream and is waiting.
    pub async fn entered(&self) {
        if let Ok(permit) = self.0.entered.acquire().await {
            permit.forget();
        }
    }

    /// Lets the held call return what it read.
    pub fn release(self) {
        self.0.release.add_permits(1);
    }
}

/// The calls a loader is to hold, by what is called (a key; `None` for a bulk load).
pub struct Holds<C>(Mutex<HashMap<C, Arc<Gate>>>);

impl<C> Default for Holds<C> {
    fn default() -> Self {
        Holds(Mutex::new(HashMap::new()))
    }
}

impl<C: Eq + Hash> Holds<C> {
    /// Holds the next call of `call`, once it has read upstream, until the test releases it.
    pub fn hold(&self, call: C) -> Hold {
        let gate = Arc::new(Gate::default());
        self.0.lock().insert(call, gate.clone());
        Hold(gate)
    }

    /// The loader's side: waits here if the test holds this call.
    pub async fn pass(&self, call: &C) {
        let gate = self.0.lock().remove(call);
        if let Some(gate) = gate {
            gate.pass().await;
        }
    }
}
