pub mod browser;
pub mod cli;
pub mod data;
pub mod gpu;
pub mod photo;
pub mod png;
pub mod run;
pub mod skip;
