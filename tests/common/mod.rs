pub mod browser;
pub mod cli;
pub mod gpu;
pub mod photo;
pub mod run;
