"""The application: the umbrella `iwarp` console script over every layer (library, serving,
deploy, components, pipelines). Nothing imports `app`; it imports everything."""
