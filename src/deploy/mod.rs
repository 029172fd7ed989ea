pub mod activation;
pub mod app;
pub mod health;
pub mod supervisor;
pub mod supervisor_policy;
pub mod supervisor_proc;
pub mod supervisor_task;
