//! One region's Docker engine, through bollard: networks, volumes and containers, each made
//! only when missing or different (check, then act), so every operation can be repeated.

use std::{collections::HashMap, time::Duration};

use bollard::{
    Docker,
    models::{
        ContainerCreateBody, ContainerInspectResponse, ContainerStateStatusEnum,
        ContainerUpdateBody, HealthConfig, HealthStatusEnum, HostConfig, NetworkCreateRequest,
        VolumeCreateRequest,
    },
    query_parameters::{
        CreateContainerOptionsBuilder, ListContainersOptionsBuilder, LogsOptionsBuilder,
        RemoveContainerOptionsBuilder, RemoveVolumeOptionsBuilder, StopContainerOptionsBuilder,
        WaitContainerOptionsBuilder,
    },
};
use futures_util::StreamExt;

use crate::{driver::Error, secret::Secret};

/// A region's engine, with what its errors must name.
#[derive(Clone, Debug)]
pub struct Engine {
    docker: Docker,
    pub region: String,
    pub endpoint: String,
    /// How many CPUs the engine's host has, once asked.
    cpus: tokio::sync::OnceCell<i64>,
}

/// A container as the driver wants it.
#[derive(Clone, Debug, PartialEq)]
pub struct ContainerSpec {
    pub name: String,
    pub image: String,
    pub command: Vec<String>,
    /// Variables by name; the values hold the database URL and `env:` secrets.
    pub env: Vec<(String, Secret)>,
    pub labels: HashMap<String, String>,
    pub network: String,
    pub volume: Option<(String, String)>,
    pub nano_cpus: i64,
    pub memory: i64,
    pub extra_hosts: Vec<String>,
    /// How often Docker runs the image's health check while the container starts, when not
    /// as the image says.
    pub health_start_interval: Option<Duration>,
}

/// What a container is, as far as drift goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerView {
    pub running: bool,
    pub image: String,
    pub labels: HashMap<String, String>,
    pub nano_cpus: i64,
    pub memory: i64,
    pub health: Option<String>,
    pub exit_code: Option<i64>,
}

impl Engine {
    /// Connects to `endpoint` (`unix://PATH` or `tcp://HOST:PORT`).
    pub fn connect(region: &str, endpoint: &str) -> Result<Engine, Error> {
        let docker = if endpoint.starts_with("unix://") {
            Docker::connect_with_socket(endpoint, 120, bollard::API_DEFAULT_VERSION)
        } else if let Some(address) = endpoint.strip_prefix("tcp://") {
            Docker::connect_with_http(
                &format!("http://{address}"),
                120,
                bollard::API_DEFAULT_VERSION,
            )
        } else {
            return Err(Error::Invalid(format!(
                "region `{region}`: the Docker endpoint `{endpoint}` is neither unix:// nor tcp://"
            )));
        };
        let engine = Engine {
            docker: docker.map_err(|source| Error::Docker {
                region: region.to_string(),
                endpoint: endpoint.to_string(),
                source,
            })?,
            region: region.to_string(),
            endpoint: endpoint.to_string(),
            cpus: tokio::sync::OnceCell::new(),
        };
        Ok(engine)
    }

    fn error(&self, source: bollard::errors::Error) -> Error {
        Error::Docker {
            region: self.region.clone(),
            endpoint: self.endpoint.clone(),
            source,
        }
    }

    /// How many CPUs the engine's host has (asked once).
    pub async fn cpus(&self) -> Result<i64, Error> {
        self.cpus
            .get_or_try_init(|| async {
                let info = self.docker.info().await.map_err(|e| self.error(e))?;
                Ok(info.ncpu.unwrap_or(1).max(1))
            })
            .await
            .copied()
    }

    /// Fails unless the engine answers.
    pub async fn ping(&self) -> Result<(), Error> {
        self.docker
            .ping()
            .await
            .map(drop)
            .map_err(|e| self.error(e))
    }

    /// Whether an image of this name exists on the engine.
    pub async fn has_image(&self, image: &str) -> Result<bool, Error> {
        match self.docker.inspect_image(image).await {
            Ok(_) => Ok(true),
            Err(error) if is_not_found(&error) => Ok(false),
            Err(error) => Err(self.error(error)),
        }
    }

    pub async fn ensure_network(
        &self,
        name: &str,
        labels: &HashMap<String, String>,
    ) -> Result<(), Error> {
        match self.docker.inspect_network(name, None).await {
            Ok(_) => return Ok(()),
            Err(error) if is_not_found(&error) => {}
            Err(error) => return Err(self.error(error)),
        }
        let request = NetworkCreateRequest {
            name: name.to_string(),
            driver: Some("bridge".into()),
            labels: Some(labels.clone()),
            ..NetworkCreateRequest::default()
        };
        match self.docker.create_network(request).await {
            Ok(_) => Ok(()),
            // Made meanwhile by a concurrent attempt: as good.
            Err(error) if is_conflict(&error) => Ok(()),
            Err(error) => Err(self.error(error)),
        }
    }

    pub async fn remove_network(&self, name: &str) -> Result<(), Error> {
        match self.docker.remove_network(name).await {
            Ok(()) => Ok(()),
            Err(error) if is_not_found(&error) => Ok(()),
            Err(error) => Err(self.error(error)),
        }
    }

    pub async fn network_exists(&self, name: &str) -> Result<bool, Error> {
        match self.docker.inspect_network(name, None).await {
            Ok(_) => Ok(true),
            Err(error) if is_not_found(&error) => Ok(false),
            Err(error) => Err(self.error(error)),
        }
    }

    pub async fn ensure_volume(
        &self,
        name: &str,
        labels: &HashMap<String, String>,
    ) -> Result<(), Error> {
        match self.docker.inspect_volume(name).await {
            Ok(_) => return Ok(()),
            Err(error) if is_not_found(&error) => {}
            Err(error) => return Err(self.error(error)),
        }
        let request = VolumeCreateRequest {
            name: Some(name.to_string()),
            labels: Some(labels.clone()),
            ..VolumeCreateRequest::default()
        };
        self.docker
            .create_volume(request)
            .await
            .map(drop)
            .map_err(|e| self.error(e))
    }

    pub async fn remove_volume(&self, name: &str) -> Result<(), Error> {
        let options = RemoveVolumeOptionsBuilder::default().force(true).build();
        match self.docker.remove_volume(name, Some(options)).await {
            Ok(()) => Ok(()),
            Err(error) if is_not_found(&error) => Ok(()),
            Err(error) => Err(self.error(error)),
        }
    }

    pub async fn volume_exists(&self, name: &str) -> Result<bool, Error> {
        match self.docker.inspect_volume(name).await {
            Ok(_) => Ok(true),
            Err(error) if is_not_found(&error) => Ok(false),
            Err(error) => Err(self.error(error)),
        }
    }

    /// The container of this name, if there is one.
    pub async fn container(&self, name: &str) -> Result<Option<ContainerView>, Error> {
        match self.docker.inspect_container(name, None).await {
            Ok(inspect) => Ok(Some(view(&inspect))),
            Err(error) if is_not_found(&error) => Ok(None),
            Err(error) => Err(self.error(error)),
        }
    }

    /// Makes the container exist as `spec` says and run: one that already has the same image,
    /// labels and limits is kept (and started); any other is replaced.
    ///
    /// A create sent by an attempt that was cut off can reach the engine after this one
    /// looked: the name is then taken when it creates, and it looks again at what took it.
    /// The engine reserves a name before the container it names can be inspected, so the
    /// looks after a taken name wait a little longer each time.
    pub async fn ensure_running(&self, spec: &ContainerSpec) -> Result<(), Error> {
        let mut wait = Duration::from_millis(25);
        for look in 0..LOOKS {
            if look > 0 {
                tokio::time::sleep(wait).await;
                wait *= 2;
            }
            let made = match self.container(&spec.name).await? {
                Some(existing)
                    if existing.image == spec.image
                        && existing.labels == spec.labels
                        && existing.nano_cpus == spec.nano_cpus
                        && existing.memory == spec.memory =>
                {
                    true
                }
                Some(_) => {
                    self.remove_container(&spec.name).await?;
                    self.create(spec).await?
                }
                None => self.create(spec).await?,
            };
            // Another maker may replace what was just made: a container it marked for
            // removal cannot start, and the next look finds what is there instead.
            if made && self.try_start(&spec.name).await? {
                return Ok(());
            }
        }
        Err(Error::Invalid(format!(
            "region `{}`: the container `{}` was taken or replaced each of the {LOOKS} times it was made; something else on the engine at {} makes containers of that name",
            self.region, spec.name, self.endpoint
        )))
    }

    /// Creates the container; false when its name was taken meanwhile.
    async fn create(&self, spec: &ContainerSpec) -> Result<bool, Error> {
        let options = CreateContainerOptionsBuilder::default()
            .name(&spec.name)
            .build();
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            cmd: Some(spec.command.clone()),
            env: Some(
                spec.env
                    .iter()
                    .map(|(name, value)| format!("{name}={}", value.expose()))
                    .collect(),
            ),
            labels: Some(spec.labels.clone()),
            // Docker takes what is left unset here from the image's health check.
            healthcheck: spec.health_start_interval.map(|interval| HealthConfig {
                start_interval: i64::try_from(interval.as_nanos()).ok(),
                ..HealthConfig::default()
            }),
            host_config: Some(HostConfig {
                network_mode: Some(spec.network.clone()),
                nano_cpus: Some(spec.nano_cpus),
                memory: Some(spec.memory),
                binds: spec
                    .volume
                    .as_ref()
                    .map(|(volume, path)| vec![format!("{volume}:{path}")]),
                extra_hosts: Some(spec.extra_hosts.clone()),
                ..HostConfig::default()
            }),
            ..ContainerCreateBody::default()
        };
        match self.docker.create_container(Some(options), body).await {
            Ok(_) => Ok(true),
            Err(error) if is_conflict(&error) => Ok(false),
            Err(error) if is_not_found(&error) => Err(Error::Invalid(format!(
                "region `{}`: the image `{}` is not on the engine at {}; build it with `wakafleet image build`",
                self.region, spec.image, self.endpoint
            ))),
            Err(error) => Err(self.error(error)),
        }
    }

    /// Starts the container; false when the engine refuses because it is being removed or
    /// replaced (409).
    async fn try_start(&self, name: &str) -> Result<bool, Error> {
        match self.docker.start_container(name, None).await {
            Ok(()) => Ok(true),
            // 304: already running.
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 304, ..
            }) => Ok(true),
            Err(error) if is_conflict(&error) || is_not_found(&error) => Ok(false),
            Err(error) => Err(self.error(error)),
        }
    }

    pub async fn start(&self, name: &str) -> Result<(), Error> {
        match self.docker.start_container(name, None).await {
            Ok(()) => Ok(()),
            // 304: already running.
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 304, ..
            }) => Ok(()),
            Err(error) => Err(self.error(error)),
        }
    }

    pub async fn stop(&self, name: &str) -> Result<(), Error> {
        let options = StopContainerOptionsBuilder::default().t(10).build();
        match self.docker.stop_container(name, Some(options)).await {
            Ok(()) => Ok(()),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 304, ..
            }) => Ok(()),
            Err(error) if is_not_found(&error) => Ok(()),
            Err(error) => Err(self.error(error)),
        }
    }

    pub async fn remove_container(&self, name: &str) -> Result<(), Error> {
        let options = RemoveContainerOptionsBuilder::default().force(true).build();
        match self.docker.remove_container(name, Some(options)).await {
            Ok(()) => Ok(()),
            Err(error) if is_not_found(&error) => Ok(()),
            // A caller cut off while it removed the container left the engine removing it:
            // it is removed once it is gone.
            Err(error) if is_removal_in_progress(&error) => self.wait_removed(name).await,
            Err(error) => Err(self.error(error)),
        }
    }

    /// Waits until the container `name` no longer exists.
    async fn wait_removed(&self, name: &str) -> Result<(), Error> {
        let options = WaitContainerOptionsBuilder::default()
            .condition("removed")
            .build();
        let mut waits = self.docker.wait_container(name, Some(options));
        while let Some(wait) = waits.next().await {
            match wait {
                // bollard reports the removed container's non-zero exit code as an error.
                Ok(_) | Err(bollard::errors::Error::DockerContainerWaitError { .. }) => {}
                Err(error) if is_not_found(&error) => {}
                Err(error) => return Err(self.error(error)),
            }
        }
        Ok(())
    }

    /// Changes a running container's CPU and memory limits in place.
    pub async fn update_limits(
        &self,
        name: &str,
        nano_cpus: i64,
        memory: i64,
    ) -> Result<(), Error> {
        let body = ContainerUpdateBody {
            nano_cpus: Some(nano_cpus),
            memory: Some(memory),
            memory_swap: Some(-1),
            ..ContainerUpdateBody::default()
        };
        self.docker
            .update_container(name, body)
            .await
            .map_err(|e| self.error(e))
    }

    /// The last lines a container wrote.
    pub async fn logs(&self, name: &str) -> Result<String, Error> {
        let options = LogsOptionsBuilder::default()
            .stdout(true)
            .stderr(true)
            .tail("20")
            .build();
        let mut stream = self.docker.logs(name, Some(options));
        let mut text = String::new();
        while let Some(chunk) = stream.next().await {
            text += &chunk.map_err(|e| self.error(e))?.to_string();
        }
        Ok(text)
    }

    /// Waits until Docker reports the container healthy (its image's HEALTHCHECK); fails at
    /// once when it turns unhealthy or stops.
    pub async fn wait_healthy(&self, name: &str, timeout: Duration) -> Result<(), Error> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let view = self.container(name).await?.ok_or_else(|| Error::Step {
                step: "health".into(),
                reason: format!("the container {name} is gone"),
            })?;
            match view.health.as_deref() {
                Some("healthy") => return Ok(()),
                Some("unhealthy") => {
                    return Err(Error::Step {
                        step: "health".into(),
                        reason: format!("{name} is unhealthy"),
                    });
                }
                _ if !view.running => {
                    return Err(Error::Step {
                        step: "health".into(),
                        reason: format!(
                            "{name} stopped (exit code {}): {}",
                            view.exit_code.unwrap_or(-1),
                            self.logs(name).await.unwrap_or_default()
                        ),
                    });
                }
                _ if tokio::time::Instant::now() > deadline => {
                    return Err(Error::Step {
                        step: "health".into(),
                        reason: format!("{name} was not healthy within {timeout:?}"),
                    });
                }
                _ => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        }
    }

    /// The address of a container on a network.
    pub async fn address(&self, name: &str, network: &str) -> Result<Option<String>, Error> {
        match self.docker.inspect_container(name, None).await {
            Ok(inspect) => Ok(inspect
                .network_settings
                .and_then(|settings| settings.networks)
                .and_then(|networks| networks.get(network).cloned())
                .and_then(|endpoint| endpoint.ip_address)
                .filter(|address| !address.is_empty())),
            Err(error) if is_not_found(&error) => Ok(None),
            Err(error) => Err(self.error(error)),
        }
    }

    /// Names of the containers carrying `label=value`.
    pub async fn containers_labelled(
        &self,
        label: &str,
        value: &str,
    ) -> Result<Vec<String>, Error> {
        let filters = HashMap::from([("label".to_string(), vec![format!("{label}={value}")])]);
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        let containers = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(|e| self.error(e))?;
        Ok(containers
            .into_iter()
            .filter_map(|container| container.names?.first().cloned())
            .map(|name| name.trim_start_matches('/').to_string())
            .collect())
    }
}

fn view(inspect: &ContainerInspectResponse) -> ContainerView {
    let state = inspect.state.as_ref();
    let config = inspect.config.as_ref();
    let host = inspect.host_config.as_ref();
    ContainerView {
        running: state.and_then(|state| state.running).unwrap_or(false)
            || state.and_then(|state| state.status) == Some(ContainerStateStatusEnum::RESTARTING),
        image: config
            .and_then(|config| config.image.clone())
            .unwrap_or_default(),
        labels: config
            .and_then(|config| config.labels.clone())
            .unwrap_or_default(),
        nano_cpus: host.and_then(|host| host.nano_cpus).unwrap_or(0),
        memory: host.and_then(|host| host.memory).unwrap_or(0),
        health: state
            .and_then(|state| state.health.as_ref())
            .and_then(|health| health.status)
            .filter(|status| *status != HealthStatusEnum::EMPTY)
            .map(|status| status.to_string()),
        exit_code: state.and_then(|state| state.exit_code),
    }
}

/// How many times `ensure_running` looks at a container whose name is taken as it creates
/// it: the waits between them add up to about 6 s.
const LOOKS: usize = 9;

fn is_not_found(error: &bollard::errors::Error) -> bool {
    matches!(
        error,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

fn is_removal_in_progress(error: &bollard::errors::Error) -> bool {
    matches!(
        error,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 409,
            message,
        } if message.contains("already in progress")
    )
}

fn is_conflict(error: &bollard::errors::Error) -> bool {
    matches!(
        error,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 409,
            ..
        }
    )
}
