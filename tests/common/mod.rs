pub mod gpu;
pub mod photo;
pub mod run;
