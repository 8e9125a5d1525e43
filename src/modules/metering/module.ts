import { notInitialised, type CreditModule } from "../../core/module.js";
import { coreOf } from "../../core/services/credit-core.js";
import type { PricingService } from "../pricing/service.js";
import { sessionDeps, type SessionDeps } from "./service.js";

/** The metering module (docs/metering.md) as a `CreditModule`, with what its sessions use once initialised. */
export interface MeteringModule extends CreditModule {
  /** What metering's sessions use of the core, with the price book (a `ConfigurationError` before `init`). */
  session(): SessionDeps;
}

/** The metering module over the price book `pricing`: `init` takes the core's holds and commits. */
export function meteringModule(pricing: PricingService | undefined): MeteringModule {
  let deps: SessionDeps | undefined;
  return {
    id: "metering",
    init(ctx) {
      deps = sessionDeps(coreOf(ctx), pricing);
    },
    session() {
      if (deps === undefined) throw notInitialised("metering");
      return deps;
    },
  };
}
