"""What a search leaves behind and shows: `best_model/` (`best_model`), the end-of-search report (`report`), the
per-trial tracker runs (`trackers`) and the trials' progress bar (`progress`)."""
