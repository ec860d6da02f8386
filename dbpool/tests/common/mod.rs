//! The throwaway PostgreSQL cluster (crate `greenhub-pgtest`) and managers pointing at it.

use std::time::Duration;

use greenhub_dbpool::PgManager;
use greenhub_dbpool::pg::{Config, NoTls};
pub use greenhub_pgtest::Pg;

/// Managers for a test server.
pub trait Managers {
    /// A manager for the server's own parameters.
    fn manager(&self) -> PgManager;
    /// A manager for other parameters (a wrong password, another port).
    fn manager_for(&self, conninfo: &str) -> PgManager;
}

impl Managers for Pg {
    fn manager(&self) -> PgManager {
        self.manager_for(&self.conninfo)
    }

    fn manager_for(&self, conninfo: &str) -> PgManager {
        let mut config: Config = conninfo.parse().expect("valid conninfo");
        config.connect_timeout(Duration::from_secs(2));
        PgManager::new(config, NoTls)
    }
}
