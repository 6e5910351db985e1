//! One module per routed page.

mod benchmarks;
mod explorer;
mod home;
mod leaderboard;
mod not_found;
mod playground;
mod run;
mod signin;
mod workspaces;

pub use benchmarks::Benchmarks;
pub use explorer::Explorer;
pub use home::Home;
pub use leaderboard::Leaderboard;
pub use not_found::NotFound;
pub use playground::Playground;
pub use run::Run;
pub use signin::SignIn;
pub use workspaces::Workspaces;
