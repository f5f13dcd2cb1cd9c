# circuitflow: emotion and aesthetics circuits in language and vision models.
# Run: snakemake --cores all results/stats/effect_sizes.csv   (see README.md)
from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version, validate

from circuitflow.core.errors import check_yaml_file
from circuitflow.workflow import describe_validation_error

min_version("9.0")


# --configfile replaces the default config instead of merging into it (model lists must not mix).
# Snakemake reports a bad YAML file without its name or line; say both (a --configfile is
# parsed before this file runs, so only the default config.yaml can be checked here).
if not workflow.overwrite_configfiles:
    check_yaml_file("config.yaml")

    configfile: "config.yaml"


try:
    validate(config, schema="schemas/config.schema.yaml", set_default=True)
except WorkflowError as err:
    if not hasattr(
        err.__context__, "absolute_path"
    ):  # not a jsonschema ValidationError
        raise
    raise WorkflowError(describe_validation_error(err.__context__)) from None


include: "rules/common.smk"
include: "rules/common_projectors.smk"
include: "rules/models.smk"
include: "rules/dataset.smk"
include: "rules/extract.smk"
include: "rules/vectors.smk"
include: "rules/sae.smk"
include: "rules/alignment.smk"
include: "rules/patching.smk"
include: "rules/steering.smk"
include: "rules/projectors.smk"
include: "rules/stats.smk"
include: "rules/calibration.smk"
include: "rules/report.smk"


onerror:
    repeat_job_errors(log)


rule all:
    default_target: True
    input:
        EFFECT_SIZES,
        CALIBRATION,
        "results/stats/summary.md",
        rules.power_analysis.output,
        rules.k_selection.output,
        rules.plot_separability.output,
        rules.plot_cosines.output,
        rules.plot_steering.output,
        rules.plot_patching.output,
        rules.plot_alignment.output,
        rules.plot_sae.output,
        rules.plot_vision.output,
        rules.plot_projectors.output if PROJECTOR_VLMS else [],
        rules.report_index.output,
