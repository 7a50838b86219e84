"""What each pipeline step does, as plain functions the KFP components in `components/`
call. Kept apart from the component definitions because inside a running KFP task
`kfp.dsl` is the slim runtime package without `dsl.component`: a step's body can import
these modules, not the ones that declare components."""
