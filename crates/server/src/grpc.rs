//! OTLP/gRPC: TraceService and LogsService on the same conversion and store as HTTP.

use std::sync::Arc;

use llmtrace_ingest::convert_traces;
use llmtrace_model::{Error, ErrorCode, SpanSource};
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::LogsService;
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsPartialSuccess, ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceService;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use tonic::{Request, Response, Status};

use crate::http::AppState;

pub struct Otlp {
    pub state: Arc<AppState>,
}

fn status(err: &Error) -> Status {
    match err.code() {
        ErrorCode::BadRequest => Status::invalid_argument(err.to_string()),
        ErrorCode::NotFound => Status::not_found(err.to_string()),
        ErrorCode::TooLarge => Status::resource_exhausted(err.to_string()),
        ErrorCode::RateLimited | ErrorCode::Unavailable => Status::unavailable(err.to_string()),
        ErrorCode::Internal => Status::internal(err.to_string()),
    }
}

fn project_of(state: &AppState, metadata: &tonic::metadata::MetadataMap) -> Result<String, Status> {
    match metadata
        .get("x-llmtrace-project")
        .and_then(|v| v.to_str().ok())
    {
        Some(project) if llmtrace_ingest::valid_project(project) => Ok(project.to_string()),
        Some(project) => Err(Status::invalid_argument(format!(
            "x-llmtrace-project {project:?} is not a valid project name"
        ))),
        None => Ok(state.default_project.clone()),
    }
}

#[tonic::async_trait]
impl TraceService for Otlp {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let project = project_of(&self.state, request.metadata())?;
        let Ok(_slot) = self.state.ingest_slots.try_acquire() else {
            return Err(Status::unavailable(
                "too many ingest requests in flight; retry shortly",
            ));
        };
        let converted = convert_traces(request.get_ref(), &project, SpanSource::Otlp);
        crate::join::store_spans(&self.state, converted.spans)
            .await
            .map_err(|e| status(&e))?;
        Ok(Response::new(ExportTraceServiceResponse {
            partial_success: (converted.rejected > 0).then(|| ExportTracePartialSuccess {
                rejected_spans: converted.rejected as i64,
                error_message: converted.errors.join("; "),
            }),
        }))
    }
}

#[tonic::async_trait]
impl LogsService for Otlp {
    async fn export(
        &self,
        request: Request<ExportLogsServiceRequest>,
    ) -> Result<Response<ExportLogsServiceResponse>, Status> {
        let project = project_of(&self.state, request.metadata())?;
        let converted = llmtrace_ingest::logs::convert_logs(request.get_ref(), &project);
        self.state.log_records.fetch_add(
            converted.events.len() as u64 + converted.unattached,
            std::sync::atomic::Ordering::Relaxed,
        );
        crate::join::store_log_events(&self.state, converted.events)
            .await
            .map_err(|e| status(&e))?;
        Ok(Response::new(ExportLogsServiceResponse {
            partial_success: (converted.unattached > 0).then(|| ExportLogsPartialSuccess {
                rejected_log_records: 0,
                error_message: format!(
                    "{} log records name no span and were not stored",
                    converted.unattached
                ),
            }),
        }))
    }
}
