//! A focused FHIRPath evaluator for the expressions of the R4 SearchParameters.
