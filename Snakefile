# circuitflow: emotion and aesthetics circuits in language and vision models.
# Run: snakemake --cores all results/stats/effect_sizes.csv   (see README.md)
from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version, validate

from circuitflow.config import describe_validation_error

min_version("9.0")


# --configfile replaces the default config instead of merging into it (model lists must not mix).
if not workflow.overwrite_configfiles:

    configfile: "config.yaml"


try:
    validate(config, schema="schemas/config.schema.yaml", set_default=True)
except WorkflowError as err:
    cause = next((a for a in err.args if hasattr(a, "absolute_path")), None)
    if cause is None:
        raise
    raise WorkflowError(describe_validation_error(cause)) from None


include: "rules/common.smk"
include: "rules/models.smk"
include: "rules/dataset.smk"
include: "rules/extract.smk"
include: "rules/vectors.smk"
include: "rules/stats.smk"


rule all:
    input:
        EFFECT_SIZES,
    default_target: True
