"""The exceptions the remediator raises, under one base.

Every exception of this package is a `RemediatorError`, so a caller can catch the whole family, or
one branch of it:

    RemediatorError
    ├── ConfigurationError          a file or setting that cannot be used; says which and where
    │   ├── yamlload.ConfigErrors       every problem of a load, each with file:line:field
    │   ├── settings.SettingsError      remediator.yaml, the environment, secret files
    │   ├── alerts.matchers.MatcherError    a matcher Alertmanager (or RE2) would refuse  (also ValueError)
    │   ├── playbooks.templating.TemplateError  a template that does not parse or render  (also ValueError)
    │   └── playbooks.params.ParamError     a param value its spec refuses               (also ValueError)
    ├── store.StoreError            the store cannot do it now (the webhook answers 503, Alertmanager retries)
    │   └── store.DuplicateExecution    the (rule, occurrence) already has this run
    ├── RequestError                a request the web layer refuses (4xx)
    │   ├── web.intake.TooLarge         the body passed its cap
    │   ├── web.intake.Unreadable       the body cannot be read (bad gzip, cut short)
    │   ├── web.listing.QueryError      a list filter that makes no sense              (also ValueError)
    │   └── web.operations.Refused      an operator action refused (401, 403, 404, 409)
    ├── StepError                   a step that could not do its work
    │   ├── flow.executor.StepFailed    a step failed (its outcome says how)
    │   ├── steps.promql.QueryError     Prometheus refused or failed a query
    │   ├── steps.exec_env.Unpassable   a value the kernel cannot pass to a program
    │   └── (a control step run outside a run raises StepError itself)
    ├── escalation.channels.DeliveryError   a channel did not take a message (it is retried)
    └── flow.reconciler.AlertmanagerError   an Alertmanager did not answer a reconciliation pass

The ValueError subclasses stay ValueErrors because pydantic turns a ValueError raised while validating
into a validation error that names the field.
"""

from __future__ import annotations


class RemediatorError(Exception):
    """Base of every exception the remediator raises."""


class ConfigurationError(RemediatorError):
    """A configuration file or setting that cannot be used."""


class RequestError(RemediatorError):
    """A request the web layer refuses with a 4xx."""


class StepError(RemediatorError):
    """A playbook step that could not do its work."""
