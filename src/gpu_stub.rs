#[derive(Clone, Debug, Default)]
pub struct DeviceChoice {
    pub backend: Option<String>,
    pub adapter: Option<String>,
}
pub struct GpuBackend;
impl GpuBackend {
    pub fn new(
        _: crate::model::Params,
        _: crate::model::Hyper,
        _: crate::data::Mnist,
        _: &DeviceChoice,
    ) -> anyhow::Result<crate::cpu::CpuBackend> {
        anyhow::bail!("no gpu yet")
    }
}
pub fn list_adapters(_: &DeviceChoice) -> anyhow::Result<Vec<()>> {
    Ok(vec![])
}
pub fn format_adapters(_: &[()]) -> String {
    String::new()
}
